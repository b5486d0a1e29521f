import sys

from tersim.cli import main

sys.exit(main())
