from vaesweep.cli import main

main()
