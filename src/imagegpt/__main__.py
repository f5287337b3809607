import sys

from imagegpt.cli import main

sys.exit(main())
