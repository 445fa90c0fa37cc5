"""Switchyard node agent: collects GPU, host and inference-server metrics and pushes them to the server.

This package never imports Django: it installs alone on a GPU host with `pip install '.[agent]'`.
"""

__version__ = "1.0"
