import sys

from ctrsink.cli import main

sys.exit(main())
