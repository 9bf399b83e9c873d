"""``python -m lmconv_bench`` == ``lmconv-bench`` (so ``torchrun -m lmconv_bench ...`` works)."""

from .cli import main

if __name__ == "__main__":
    main()
