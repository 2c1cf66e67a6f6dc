from flightrec.cli.main import main

main()
