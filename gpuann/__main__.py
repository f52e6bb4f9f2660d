import sys

from gpuann.cli import main

sys.exit(main())
