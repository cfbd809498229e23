"""A release at work, for ``test_two_releases.py``: run from a release's own copy of the project.

``python release_writer.py LABEL STOP_FILE LOG_FILE``: through the release's own models (so through
its version of the schema), creates calls and updates the ones it created until STOP_FILE exists,
appending each row's values as it wrote them to LOG_FILE (JSON lines). It reads the shape of its
release from its models: the release before the change has ``outcome`` and ``voice_id``, the one
after has ``call_outcome`` and no ``voice_id``.
"""
from __future__ import annotations

import json
import os
import sys

import django

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "reautomation.settings")
django.setup()

from calls.models import Call  # noqa: E402

label, stop_file, log_file = sys.argv[1:4]
fields = {field.name for field in Call._meta.get_fields()}
outcome = "call_outcome" if "call_outcome" in fields else "outcome"
has_voice = "voice_id" in fields
mine: list[int] = []
n = 0
with open(log_file, "a", encoding="utf-8") as log:
    while not os.path.exists(stop_file) or n < 5:
        n += 1
        values = {outcome: f"{label}-{n}", "duration_seconds": n}
        if has_voice:
            values["voice_id"] = f"voice-{label}-{n}"
        call = Call.objects.create(phone_number=f"+1-{label}-{n}", **values)
        mine.append(call.id)
        log.write(json.dumps({"id": call.id, "outcome": values[outcome], "duration_seconds": n,
                              "voice_id": values.get("voice_id")}) + "\n")
        if n % 3 == 0:  # and update one written earlier, through the ORM's save (every field written)
            earlier = Call.objects.get(id=mine[-3])
            setattr(earlier, outcome, f"{label}-{n}-updated")
            earlier.duration_seconds = 100_000 + n
            earlier.save()
            log.write(json.dumps({"id": earlier.id, "outcome": getattr(earlier, outcome),
                                  "duration_seconds": earlier.duration_seconds,
                                  "voice_id": getattr(earlier, "voice_id", None)}) + "\n")
        log.flush()
print(f"{label}: {n} calls written", flush=True)
