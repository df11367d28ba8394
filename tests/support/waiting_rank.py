"""A stand-in rank for launcher tests: dies with its torchrun, exits 0 once the stop file exists."""

import os
import time

from chatbaker_megatron.launch import die_with_parent
from chatbaker_megatron.stop_signals import STOP_FILE_ENV

if __name__ == "__main__":
    die_with_parent()
    while not os.path.exists(os.environ[STOP_FILE_ENV]):
        time.sleep(0.05)
