"""New ids are random version-4 UUIDs in canonical text, unique, and not shared with a forked child."""

from __future__ import annotations

import os
import uuid

from backoffice import ids


def test_ids_are_canonical_version_4_uuids_from_every_part_of_the_read_ahead() -> None:
    made = [ids.new_id() for _ in range(3 * ids._CHUNK // 16 + 7)]  # three read-aheads and part of a fourth
    assert len(set(made)) == len(made)
    for text in made:
        parsed = uuid.UUID(text)
        assert str(parsed) == text  # lower-case, dashed, 36 characters
        assert parsed.version == 4 and parsed.variant == uuid.RFC_4122
    # every hex digit of the random part varies: the bytes are not reused or left zero
    for at in (0, 9, 15, 20, 35):
        assert len({text[at] for text in made}) > 4
    assert {text[19] for text in made} == set("89ab")  # the variant's digit, with both random bits


def test_a_forked_child_does_not_repeat_its_parents_next_ids() -> None:
    ids.new_id()  # the parent has read ahead
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its next ids, to the parent
        os.close(read)
        os.write(write, ",".join(ids.new_id() for _ in range(4)).encode())
        os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        childs = pipe.read().split(",")
    os.waitpid(pid, 0)
    parents = [ids.new_id() for _ in range(4)]
    assert len(childs) == 4 and not set(childs) & set(parents)
