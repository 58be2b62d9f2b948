"""The end-to-end VQ-VAE baseline: van den Oord et al. 2017, "Neural Discrete Representation
Learning", with the VAE's own trunks.

It shares the VAE's encoder/decoder trunks so the comparison is about the bottleneck only. The
encoder gives an (H, W) grid of C-dim vectors, each snapped to the nearest of K codewords:
- grid equal to the trunk's feature map: a 1x1 conv projects 256 -> C channels per position;
- a smaller grid (e.g. 2x4 to match a flat VAE's bit rate): a linear layer on the flattened map,
  like the VAE's flat mu, split into H*W chunks of C.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
from torch import nn

from geovq.models.blocks import TRUNK_CHANNELS, TRUNKS, decoder_trunk, encoder_trunk, trunk_grid
from geovq.models.fsq import FiniteScalarQuantizer, check_levels, codebook_size
from geovq.models.vae import reconstruction_loss

CODEBOOK_UPDATES = ("loss", "ema")
QUANTIZERS = ("vq", "fsq")
RECON_KINDS = ("bce", "mse")
# Laplace smoothing of the EMA cluster counts (Sonnet's VectorQuantizerEMA uses the same value).
EMA_EPSILON = 1e-5
# Rows of z_e per distance block in nearest-codeword search: bounds memory to chunk x K floats.
ASSIGN_CHUNK = 16384


@dataclass(frozen=True)
class VQVAEConfig:
    """Architecture and codebook training of a VQ-VAE; stored as JSON in the weights' metadata."""

    channels: int = 1
    height: int = 28
    width: int = 28
    grid_h: int = 7
    grid_w: int = 7
    k: int = 256
    codebook_dim: int = 4
    beta: float = 0.25
    codebook_update: str = "loss"
    ema_decay: float = 0.99
    dead_code_restart: int = 0
    trunk: str = "reference"
    # "fsq": finite scalar quantization with these levels per channel (k = ∏ levels,
    # codebook_dim = len(levels)); "vq": the learned nearest-codeword codebook.
    quantizer: str = "vq"
    levels: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        # JSON metadata gives the levels back as a list
        object.__setattr__(self, "levels", tuple(int(level) for level in self.levels))

    @classmethod
    def fsq(cls, levels: tuple[int, ...], **fields) -> VQVAEConfig:
        """An FSQ config: k and codebook_dim follow from the levels."""
        levels = tuple(int(level) for level in levels)
        check_levels(levels)
        return cls(
            quantizer="fsq",
            levels=levels,
            k=codebook_size(levels),
            codebook_dim=len(levels),
            **fields,
        )

    @property
    def grid(self) -> tuple[int, int]:
        """Code grid (H, W)."""
        return self.grid_h, self.grid_w

    @property
    def trunk_grid(self) -> tuple[int, int]:
        """Trunk feature-map size (h, w)."""
        return trunk_grid((self.height, self.width))

    @property
    def positions(self) -> int:
        """H*W: codes per image."""
        return self.grid_h * self.grid_w

    @property
    def bits_per_image(self) -> float:
        """H*W*log2(K): the bit rate of one image's codes under a uniform prior."""
        return self.positions * math.log2(self.k)

    @property
    def uses_conv_projection(self) -> bool:
        """True when the code grid is the trunk's own map (1x1 conv), False for a linear one."""
        return self.grid == self.trunk_grid

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> VQVAEConfig:
        fields = json.loads(text)
        fields["levels"] = tuple(fields.get("levels", ()))
        return cls(**fields)


def validate_config(config: VQVAEConfig) -> None:
    """Raise ValueError naming the bad field and the allowed values."""
    h, w = config.trunk_grid
    if config.channels < 1:
        raise ValueError(f"channels must be >= 1, got {config.channels}")
    if h < 1 or w < 1:
        raise ValueError(
            f"images of {config.height}x{config.width} are too small for the trunk "
            f"(it downsamples by 4): height and width must be >= 4"
        )
    if not (1 <= config.grid_h <= h and 1 <= config.grid_w <= w):
        raise ValueError(
            f"code grid {config.grid_h}x{config.grid_w} is not allowed for "
            f"{config.height}x{config.width} images: use the trunk's {h}x{w} feature map or a "
            f"smaller grid HxW with 1 <= H <= {h} and 1 <= W <= {w} (e.g. 2x4)"
        )
    if config.trunk not in TRUNKS:
        raise ValueError(f"unknown trunk {config.trunk!r}: use one of {TRUNKS}")
    if config.k < 1:
        raise ValueError(f"codebook size k must be >= 1, got {config.k}")
    if config.codebook_dim < 1:
        raise ValueError(f"codebook_dim must be >= 1, got {config.codebook_dim}")
    _validate_quantizer(config.codebook_update, config.ema_decay, config.dead_code_restart)
    if config.beta < 0:
        raise ValueError(f"beta (commitment weight) must be >= 0, got {config.beta}")
    if config.quantizer not in QUANTIZERS:
        raise ValueError(f"unknown quantizer {config.quantizer!r}: use one of {QUANTIZERS}")
    if config.quantizer == "fsq":
        _validate_fsq(config)


def _validate_fsq(config: VQVAEConfig) -> None:
    check_levels(config.levels)
    if config.k != codebook_size(config.levels) or config.codebook_dim != len(config.levels):
        raise ValueError(
            f"FSQ levels {list(config.levels)} give k={codebook_size(config.levels)} and "
            f"codebook_dim={len(config.levels)}, got k={config.k}, "
            f"codebook_dim={config.codebook_dim}; build the config with VQVAEConfig.fsq"
        )


def _validate_quantizer(update: str, ema_decay: float, dead_code_restart: int) -> None:
    if update not in CODEBOOK_UPDATES:
        raise ValueError(f"unknown codebook_update {update!r}: use one of {CODEBOOK_UPDATES}")
    if not 0 < ema_decay < 1:
        raise ValueError(f"ema_decay must be in (0, 1), got {ema_decay}")
    if dead_code_restart < 0:
        raise ValueError(f"dead_code_restart must be >= 0 (0 disables), got {dead_code_restart}")


def _same(tensor: torch.Tensor) -> torch.Tensor:
    """One process: its shard is the whole batch."""
    return tensor


class VectorQuantizer(nn.Module):
    """Nearest-codeword bottleneck (M, C) -> (M, C) with a straight-through gradient.

    ``update="loss"`` trains the codebook by the codebook loss ||sg[z_e] - e||^2; ``"ema"`` by
    exponential moving averages of cluster counts and sums (the paper's appendix A.1), with no
    codebook loss. ``dead_code_restart=N`` re-seeds a codeword unused for N training steps from a
    random encoder output of the batch. Both updates run only in training mode; when several
    processes each quantize a shard of the batch, ``share_statistics`` makes them the whole
    batch's.
    """

    def __init__(
        self,
        k: int,
        dim: int,
        *,
        update: str = "loss",
        ema_decay: float = 0.99,
        dead_code_restart: int = 0,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if k < 1 or dim < 1:
            raise ValueError(f"codebook must have k >= 1 and dim >= 1, got k={k}, dim={dim}")
        _validate_quantizer(update, ema_decay, dead_code_restart)
        self.k = k
        self.dim = dim
        self.update = update
        self.ema_decay = ema_decay
        self.dead_code_restart = dead_code_restart
        # CPU generator owned here, so init and restarts depend on `seed` only.
        self.generator = torch.Generator().manual_seed(seed)
        # Uniform(-1/K, 1/K), the init of the reference implementation; k-means init replaces it.
        initial = (torch.rand(k, dim, generator=self.generator) * 2 - 1) / k
        if update == "loss":
            self.embedding = nn.Parameter(initial)
        else:
            self.register_buffer("embedding", initial)
            # Counts start at 1 and sums at the codewords, so sums / counts is the codebook.
            self.register_buffer("cluster_size", torch.ones(k))
            self.register_buffer("embed_sum", initial.clone())
        self.register_buffer("steps_unused", torch.zeros(k, dtype=torch.int64))
        self._sum_shards: Callable[[torch.Tensor], torch.Tensor] = _same
        self._first_shard: Callable[[torch.Tensor], torch.Tensor] = _same

    def share_statistics(
        self,
        sum_shards: Callable[[torch.Tensor], torch.Tensor],
        first_shard: Callable[[torch.Tensor], torch.Tensor],
    ) -> None:
        """For a batch split over processes (geovq.distributed sets this under torchrun):
        ``sum_shards`` sums a tensor over them (EMA counts and sums, codeword use), so every
        process updates the codebook alike; ``first_shard`` gives all the first one's tensor
        (restart seeds, which each process would draw from its own shard)."""
        self._sum_shards, self._first_shard = sum_shards, first_shard

    @property
    def codebook(self) -> torch.Tensor:
        """(K, C) current codewords (detached)."""
        return self.embedding.detach()

    @torch.no_grad()
    def init_codebook(self, points: torch.Tensor) -> None:
        """Set the codebook to (K, C) ``points`` (e.g. k-means centers of encoder outputs)."""
        if points.shape != (self.k, self.dim):
            raise ValueError(
                f"init_codebook needs points of shape ({self.k}, {self.dim}), "
                f"got {tuple(points.shape)}"
            )
        points = points.to(self.embedding)
        self.embedding.copy_(points)
        if self.update == "ema":
            self.cluster_size.fill_(1.0)
            self.embed_sum.copy_(points)
        self.steps_unused.zero_()

    @torch.no_grad()
    def assign_codes(self, z_e: torch.Tensor) -> torch.Tensor:
        """(M, C) -> (M,) int64 index of the nearest codeword (squared Euclidean distance)."""
        codebook = self.embedding.detach()
        codebook_sq = codebook.pow(2).sum(1)
        # ||z||^2 is the same for every codeword, so argmin of ||e||^2 - 2 z.e suffices and
        # avoids cancelling a large ||z||^2 in float32.
        blocks = [
            torch.argmin(codebook_sq - 2 * block @ codebook.T, dim=1)
            for block in z_e.detach().split(ASSIGN_CHUNK)
        ]
        if not blocks:
            return torch.zeros(0, dtype=torch.int64, device=z_e.device)
        return torch.cat(blocks)

    def forward(
        self, z_e: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """(M, C) -> z_q (straight-through), codes (M,), and the unweighted losses.

        Losses are squared distances per vector, averaged over the M vectors: ``codebook`` is
        ||sg[z_e] - e||^2 (zero under EMA), ``commitment`` is ||z_e - sg[e]||^2.
        """
        # float32 whatever the caller's autocast: bf16 would misrank near codewords and the
        # EMA sums must match the float32 buffers
        with torch.autocast(device_type=z_e.device.type, enabled=False):
            return self._quantize(z_e.float())

    def _quantize(
        self, z_e: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        codes = self.assign_codes(z_e)
        z_q = self.embedding[codes]
        commitment = (z_e - z_q.detach()).pow(2).sum(1).mean()
        if self.update == "loss":
            codebook_loss = (z_e.detach() - z_q).pow(2).sum(1).mean()
        else:
            codebook_loss = torch.zeros((), device=z_e.device, dtype=z_e.dtype)
        z_q_st = z_e + (z_q - z_e).detach()
        if self.training:
            # under CUDA autocast z_e is bfloat16; the EMA statistics stay in the buffers' fp32
            self._training_updates(z_e.detach().to(self.embedding.dtype), codes)
        return z_q_st, codes, {"codebook": codebook_loss, "commitment": commitment}

    @torch.no_grad()
    def _training_updates(self, z_e: torch.Tensor, codes: torch.Tensor) -> None:
        counts = torch.bincount(codes, minlength=self.k).to(z_e.dtype)
        if self.update == "ema":
            sums = torch.zeros_like(self.embed_sum).index_add_(0, codes, z_e)
            # one reduction for both: column 0 the counts, the rest the sums
            stats = self._sum_shards(torch.cat([counts.unsqueeze(1), sums], dim=1))
            counts = stats[:, 0]
            self._ema_update(counts, stats[:, 1:])
        elif self.dead_code_restart > 0:
            counts = self._sum_shards(counts)
        if self.dead_code_restart > 0:
            self._restart_dead_codes(z_e, counts > 0)

    def _ema_update(self, counts: torch.Tensor, sums: torch.Tensor) -> None:
        """EMA of counts N_i and sums m_i; e_i = m_i / n_i with Laplace-smoothed counts."""
        decay = self.ema_decay
        self.cluster_size.mul_(decay).add_(counts, alpha=1 - decay)
        self.embed_sum.mul_(decay).add_(sums, alpha=1 - decay)
        total = self.cluster_size.sum()
        smoothed = (self.cluster_size + EMA_EPSILON) / (total + self.k * EMA_EPSILON) * total
        self.embedding.copy_(self.embed_sum / smoothed.unsqueeze(1))

    def _restart_dead_codes(self, z_e: torch.Tensor, used: torch.Tensor) -> None:
        """Re-seed codewords unused for ``dead_code_restart`` steps from this batch's z_e."""
        self.steps_unused.add_(1)
        self.steps_unused[used] = 0
        dead = torch.nonzero(self.steps_unused >= self.dead_code_restart).flatten()
        if dead.numel() == 0 or z_e.shape[0] == 0:
            return
        rows = self._random_rows(z_e.shape[0], dead.numel()).to(z_e.device)
        seeds = self._first_shard(z_e[rows].to(self.embedding.dtype))
        # An optimizer's moments for a re-seeded row are left as they are.
        self.embedding[dead] = seeds
        if self.update == "ema":
            self.cluster_size[dead] = 1.0
            self.embed_sum[dead] = seeds
        self.steps_unused[dead] = 0

    def _random_rows(self, rows: int, count: int) -> torch.Tensor:
        """``count`` row indices in [0, rows), distinct when there are enough rows."""
        if count <= rows:
            return torch.randperm(rows, generator=self.generator)[:count]
        return torch.randint(rows, (count,), generator=self.generator)


class VQVAE(nn.Module):
    """Images (N, C, H, W) in [0, 1] <-> codes (N, gh, gw); the decoder returns pixel logits.

    ``seed`` fixes all initial weights and the quantizer's generator without touching the global
    RNG; with ``seed=None`` weights come from the global RNG like the VAE's, and so does the
    quantizer's seed.
    """

    def __init__(self, config: VQVAEConfig, *, seed: int | None = None) -> None:
        super().__init__()
        validate_config(config)
        self.config = config
        if seed is None:
            self._build(int(torch.randint(2**62, ()).item()))
            return
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self._build(seed)

    def _build(self, quantizer_seed: int) -> None:
        config = self.config
        h, w = config.trunk_grid
        code_dims = config.positions * config.codebook_dim
        self.encoder = encoder_trunk(config.trunk, config.channels)
        self.decoder = decoder_trunk(config.trunk, config.channels)
        if config.uses_conv_projection:
            self.to_latents = nn.Conv2d(TRUNK_CHANNELS, config.codebook_dim, 1)
            self.from_latents = nn.Conv2d(config.codebook_dim, TRUNK_CHANNELS, 1)
        else:
            self.to_latents = nn.Linear(TRUNK_CHANNELS * h * w, code_dims)
            self.from_latents = nn.Linear(code_dims, TRUNK_CHANNELS * h * w)
        if config.quantizer == "fsq":
            self.quantizer = FiniteScalarQuantizer(config.levels)
            return
        self.quantizer = VectorQuantizer(
            config.k,
            config.codebook_dim,
            update=config.codebook_update,
            ema_decay=config.ema_decay,
            dead_code_restart=config.dead_code_restart,
            seed=quantizer_seed,
        )

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) -> continuous encoder outputs z_e (N, gh*gw, C), raster order."""
        features = self.encoder(images)
        n = images.shape[0]
        if self.config.uses_conv_projection:
            maps = self.to_latents(features)  # (N, C, gh, gw)
            return maps.permute(0, 2, 3, 1).reshape(n, self.config.positions, -1)
        flat = self.to_latents(features.flatten(1))
        if self.config.quantizer == "fsq":
            # Adam moves each of the linear layer's ~12k input weights by about lr per step, so
            # its outputs jump by ~lr * sum|features| and saturate FSQ's tanh bound within a few
            # steps, where the gradient dies and the codes collapse; dividing by sqrt(fan-in)
            # keeps each step's change O(lr). The 1x1 conv (fan-in 256) needs no such care.
            flat = flat / math.sqrt(self.to_latents.in_features)
        return flat.view(n, self.config.positions, self.config.codebook_dim)

    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """(N, gh*gw, C) quantized latents -> (N, C, H, W) pixel logits."""
        n = latents.shape[0]
        h, w = self.config.trunk_grid
        if self.config.uses_conv_projection:
            maps = latents.view(n, h, w, self.config.codebook_dim).permute(0, 3, 1, 2)
            features = self.from_latents(maps)
        else:
            features = self.from_latents(latents.flatten(1)).view(n, TRUNK_CHANNELS, h, w)
        return self.decoder(torch.relu(features))

    def codes_for(self, images: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) -> (N, gh, gw) int64 nearest-codeword codes; never updates the codebook."""
        with torch.no_grad():
            z_e = self.encode(images)
        codes = self.quantizer.assign_codes(z_e.reshape(-1, self.config.codebook_dim))
        return codes.view(images.shape[0], *self.config.grid)

    def decode_codes(self, codes: torch.Tensor) -> torch.Tensor:
        """(N, gh, gw) codes -> (N, C, H, W) pixel logits."""
        latents = self.quantizer.codebook[codes.reshape(codes.shape[0], -1)]
        return self.decode_latents(latents)

    def forward(
        self, images: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """Returns (logits, codes (N, gh, gw), losses {"codebook", "commitment"}).

        The losses are per image (summed over the gh*gw positions), averaged over the batch, to
        match the per-image reconstruction sum of ``vqvae_loss``.
        """
        n = images.shape[0]
        z_e = self.encode(images)
        z_q, codes, per_vector = self.quantizer(z_e.reshape(-1, self.config.codebook_dim))
        logits = self.decode_latents(z_q.view_as(z_e))
        losses = {name: loss * self.config.positions for name, loss in per_vector.items()}
        return logits, codes.view(n, *self.config.grid), losses


def vqvae_loss(
    logits: torch.Tensor,
    images: torch.Tensor,
    losses: dict[str, torch.Tensor],
    beta: float,
    recon: str = "bce",
) -> tuple[torch.Tensor, dict[str, float]]:
    """total = recon + codebook + beta * commitment (the paper's eq. 3); returns total and terms.

    recon is per image summed over pixels, batch mean: ``bce`` on logits (grayscale), ``mse`` of
    the sigmoid (RGB).
    """
    if recon not in RECON_KINDS:
        raise ValueError(f"unknown reconstruction loss {recon!r}: use one of {RECON_KINDS}")
    recon_loss = reconstruction_loss(logits, images, recon)
    total = recon_loss + losses["codebook"] + beta * losses["commitment"]
    terms = {
        "recon": float(recon_loss.detach()),
        "codebook": float(losses["codebook"].detach()),
        "commitment": float(losses["commitment"].detach()),
        "total": float(total.detach()),
    }
    return total, terms
