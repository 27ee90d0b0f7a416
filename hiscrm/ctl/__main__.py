"""``python -m hiscrm.ctl``"""

from hiscrm.ctl.main import main

raise SystemExit(main())
