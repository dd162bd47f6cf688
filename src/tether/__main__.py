from tether.cli.oneshot import main

main()
