"""The PyFlink job: thin operators that bind state and call the model core."""

from flink_jobs.native_imports import import_native_modules

# Before any operator module imports them on a pemja thread state (see native_imports).
import_native_modules()
