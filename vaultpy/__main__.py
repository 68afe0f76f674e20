from vaultpy.cli import main

main()
