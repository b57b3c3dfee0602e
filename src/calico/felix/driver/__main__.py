"""`python -m calico.felix.driver`: the dataplane driver process (see main.py)."""

import sys

from calico.felix.driver.main import main

sys.exit(main())
