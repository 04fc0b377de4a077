import sys

from karmma.cli import main

sys.exit(main())
