import sys

from haku.cli import main

sys.exit(main())
