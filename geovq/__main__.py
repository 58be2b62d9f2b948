from geovq.cli import main

main()
