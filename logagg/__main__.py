from logagg.cli import main

main()
