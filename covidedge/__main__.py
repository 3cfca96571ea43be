from covidedge.cli.main import main

main()
