"""Structured (JSON lines) logging; requests carry the apiserver's uid."""

import datetime
import json
import logging
import sys

# Attributes of a LogRecord that are not extra fields.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime", "taskName"}


class JsonFormatter(logging.Formatter):
    def format(self, record):
        entry = {
            "ts": datetime.datetime.fromtimestamp(record.created, datetime.timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                entry[key] = value if isinstance(value, (str, int, float, bool, type(None))) else str(value)
        if record.exc_info and record.exc_info[0] is not None:
            # The type only: exception text from libraries is not ours to vouch for.
            entry["exception"] = record.exc_info[0].__name__
        return json.dumps(entry, ensure_ascii=False)


def setup(level):
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    set_level(level)


def set_level(level):
    logging.getLogger().setLevel(level.upper())
    # Client libraries log request details at info/debug; keep them quiet.
    for name in ("barbicanclient", "keystoneauth", "openstack", "urllib3", "stevedore"):
        logging.getLogger(name).setLevel(logging.WARNING)
