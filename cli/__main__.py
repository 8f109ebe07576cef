from landscape.cli.main import main

main()
