"""The PyFlink job: thin operators that bind state and call the model core."""

import sys

from flink_jobs.native_imports import import_native_modules

# In a TaskManager's embedded interpreter (thread mode: pemja), before any operator module
# imports them on a pemja thread state (see native_imports). A client that only builds and
# submits the job never needs torch, and skipping it starts the job ~1.4 s sooner.
if "pemja" in sys.modules:
    import_native_modules()
