"""`python -m ctxssl_cli ...` and `torchrun -m ctxssl_cli ...` run the same app as `ctxssl ...`."""

from ctxssl_cli.cli.app import main

if __name__ == "__main__":
    main()
