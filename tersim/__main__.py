"""`python -m tersim`: Ctrl-C at any moment, even while torch is still importing, is one line and exit 130."""
import sys

try:
    from tersim.cli import main

    code = main()
except KeyboardInterrupt:
    print("tersim: interrupted", file=sys.stderr)
    code = 130
sys.exit(code)
