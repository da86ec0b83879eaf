"""New ids are version-7 UUIDs in canonical text: unique, ordered by when they were made, dated by their first 48
bits, random in the rest, and not shared with a forked child."""

from __future__ import annotations

import os
import time
import uuid

from backoffice import ids


def test_ids_are_canonical_version_7_uuids_from_every_part_of_the_read_ahead() -> None:
    made = [ids.new_id() for _ in range(3 * ids._CHUNK // ids._RANDOM + 7)]  # three read-aheads and part of a fourth
    assert len(set(made)) == len(made)
    for text in made:
        parsed = uuid.UUID(text)
        assert str(parsed) == text  # lower-case, dashed, 36 characters
        assert parsed.version == 7 and parsed.variant == uuid.RFC_4122
    # every hex digit of the random part varies: the bytes are not reused or left zero
    for at in (20, 25, 30, 35):
        assert len({text[at] for text in made}) > 4
    assert {text[19] for text in made} == set("89ab")  # the variant's digit, with both random bits


def test_an_id_starts_with_the_millisecond_it_was_made_in_and_sorts_after_older_ones() -> None:
    before = time.time_ns() // 1_000_000
    first = ids.new_id()
    after = time.time_ns() // 1_000_000
    assert before <= uuid.UUID(first).int >> 80 <= after
    time.sleep(0.002)
    later = [ids.new_id() for _ in range(50)]
    assert all(
        first < text and uuid.UUID(first) < uuid.UUID(text) for text in later
    )  # as text and as PostgreSQL's uuid


def test_new_uuid_is_a_new_id_as_a_uuid() -> None:
    made = ids.new_uuid()
    assert isinstance(made, uuid.UUID) and made.version == 7


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
