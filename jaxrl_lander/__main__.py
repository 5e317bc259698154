import sys

from jaxrl_lander.cli import main

sys.exit(main())
