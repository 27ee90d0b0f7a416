"""Platform plugins: the plugin protocol (``base``), importing platforms by name inside a
worker (``loader``), and the built-in ``demo`` generator. Names and their resolution
live in ``hiscrm.platform_names``."""
