from dynd.cli import main

main()
