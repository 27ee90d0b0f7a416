"""A platform module that takes a while to import (as one that loads a browser driver
might), so a spawned worker stays ``starting`` for about a second and a half."""

import time

from hiscrm.platforms.demo import DemoPlatform

time.sleep(1.5)


class Demo(DemoPlatform):
    pass
