"""``python -m hiscrm.master``"""

from hiscrm.master.cli import main

raise SystemExit(main())
