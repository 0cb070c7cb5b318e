from surrogate_ops.cli import main

main()
