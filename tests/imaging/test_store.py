"""The durable, idempotent store and the study life cycle, on a real SQLite index."""

from __future__ import annotations

import errno
import os
import time
from pathlib import Path

import pytest
from pydicom.data import get_testdata_file
from sqlmodel import Session, select

from services.common.db import make_engine, upgrade_schema
from services.imaging.completion.lifecycle import StudyCompleted, StudyLifecycle
from services.imaging.errors import (
    InstanceTooLarge,
    InvalidInstance,
    MissingAttribute,
    OutOfResources,
    SeriesInOtherStudy,
    StudyMismatch,
    UnsupportedSOPClass,
)
from services.imaging.intake.store import InstanceStore
from services.imaging.models import Instance, InstanceVersion, Study, StudyEvent, StudyState
from services.imaging.runtime import MIGRATIONS
from tests.harness.series import SeriesSpec, make_series, to_bytes


@pytest.fixture
def store(tmp_path: Path) -> InstanceStore:
    engine = make_engine(f"sqlite:///{tmp_path / 'index.db'}")
    upgrade_schema(engine, MIGRATIONS)
    return InstanceStore(engine, tmp_path / "storage", max_instance_bytes=10_000_000)


def test_stored_instance_is_on_disk_and_indexed(store: InstanceStore) -> None:
    ds = make_series(SeriesSpec(slices=1))[0]
    result = store.put(to_bytes(ds), source="test")
    assert result.outcome == "stored" and result.new_study
    with Session(store.engine) as session:
        row = session.get(Instance, ds.SOPInstanceUID)
        study = session.get(Study, ds.StudyInstanceUID)
    assert row is not None and study is not None
    assert store.path_of(row).read_bytes() == to_bytes(ds)
    assert row.rows == 64 and row.image_orientation_patient == "1\\0\\0\\0\\1\\0"
    assert study.patient_id == "MRN0001" and study.state is StudyState.RECEIVING
    assert not list(store.root.rglob("*.tmp"))


def test_resending_the_same_instance_is_a_duplicate(store: InstanceStore) -> None:
    data = to_bytes(make_series(SeriesSpec(slices=1))[0])
    assert store.put(data, source="a").outcome == "stored"
    assert store.put(data, source="b").outcome == "duplicate"
    with Session(store.engine) as session:
        assert len(session.exec(select(Instance)).all()) == 1
        assert len(session.exec(select(InstanceVersion)).all()) == 1
    assert len(list(store.root.rglob("*.dcm"))) == 1


def test_a_write_that_fails_is_refused_and_leaves_nothing(
    store: InstanceStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The disk full while the instance's bytes are synced: refused as out of resources,
    nothing indexed, no file left; stored once there is room again."""
    data = to_bytes(make_series(SeriesSpec(slices=1))[0])

    def full(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(OutOfResources, match="storage full"):
        store.put(data, source="test")
    monkeypatch.undo()
    with Session(store.engine) as session:
        assert session.exec(select(Instance)).all() == []
    assert not list(store.root.rglob("*.dcm")) and not list(store.root.rglob("*.tmp"))
    assert store.put(data, source="test").outcome == "stored"  # room again: stored


def test_same_uid_with_other_content_keeps_both_and_flags_a_conflict(
    store: InstanceStore,
) -> None:
    ds = make_series(SeriesSpec(slices=1))[0]
    first = to_bytes(ds)
    ds.SeriesDescription = "edited at the modality"
    second = to_bytes(ds)
    assert store.put(first, source="a").outcome == "stored"
    assert store.put(second, source="b").outcome == "conflict"
    assert store.put(second, source="b").outcome == "duplicate"
    with Session(store.engine) as session:
        instance = session.get(Instance, ds.SOPInstanceUID)
        versions = session.exec(
            select(InstanceVersion).order_by(InstanceVersion.version)  # type: ignore[arg-type]
        ).all()
    assert instance is not None and instance.conflict
    assert [(v.version, v.is_current, v.source) for v in versions] == [
        (1, True, "a"),
        (2, False, "b"),
    ]
    # The first content is still the one served; the second is kept beside it.
    assert store.path_of(instance).read_bytes() == first
    assert (store.root / versions[1].path).read_bytes() == second


@pytest.mark.parametrize(
    ("name", "error"),
    [
        ("no_meta.dcm", InvalidInstance),
        ("MR_truncated.dcm", InvalidInstance),
        ("meta_missing_tsyntax.dcm", MissingAttribute),
        ("UN_sequence.dcm", MissingAttribute),
    ],
)
def test_pydicom_corpus_bad_files_are_refused(
    store: InstanceStore, name: str, error: type[Exception]
) -> None:
    data = Path(get_testdata_file(name, download=False)).read_bytes()  # type: ignore[arg-type]
    with pytest.raises(error):
        store.put(data, source="test")
    assert not list(store.root.rglob("*.dcm"))


def test_non_dicom_and_empty_bodies_are_refused(store: InstanceStore) -> None:
    for data in (b"", b"hello", os.urandom(4096), b"\0" * 128 + b"DICM" + b"\xff" * 50):
        with pytest.raises(InvalidInstance):
            store.put(data, source="test")


def test_non_storage_sop_class_is_refused(store: InstanceStore) -> None:
    ds = make_series(SeriesSpec(slices=1))[0]
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.1.1"  # Verification
    with pytest.raises(UnsupportedSOPClass):
        store.put(to_bytes(ds), source="test")


def test_oversized_instance_and_wrong_study_are_refused(store: InstanceStore) -> None:
    data = to_bytes(make_series(SeriesSpec(slices=1, rows=512, columns=512))[0])
    small = InstanceStore(store.engine, store.root, max_instance_bytes=100_000)
    with pytest.raises(InstanceTooLarge):
        small.put(data, source="test")
    with pytest.raises(StudyMismatch):
        store.put(data, source="test", expected_study="1.2.3.4")


def test_quiet_whole_study_completes_once_and_late_instance_reopens_it(
    store: InstanceStore,
) -> None:
    lifecycle = StudyLifecycle(store.engine, quiet_seconds=0.2, gap_tolerance=0.5)
    received: list[StudyCompleted] = []
    lifecycle.subscribe(received.append)
    spec = SeriesSpec(slices=8)
    datasets = make_series(spec)
    for ds in datasets[:-1]:
        store.put(to_bytes(ds), source="test")
    assert lifecycle.sweep() == []  # not quiet yet
    time.sleep(0.3)
    assert lifecycle.sweep() == [spec.study_uid]
    assert lifecycle.sweep() == []
    assert lifecycle.deliver() == 1 and lifecycle.deliver() == 0
    assert [(e.study_instance_uid, e.study_version) for e in received] == [(spec.study_uid, 1)]

    # A late instance (the last slice, contiguous) reopens the study as version 2.
    result = store.put(to_bytes(datasets[-1]), source="test")
    assert result.study_version == 2
    time.sleep(0.3)
    assert lifecycle.sweep() == [spec.study_uid]
    lifecycle.deliver()
    assert [e.study_version for e in received] == [1, 2]


def test_study_with_a_gap_is_held_as_incomplete(store: InstanceStore) -> None:
    lifecycle = StudyLifecycle(store.engine, quiet_seconds=0.1, gap_tolerance=0.5)
    spec = SeriesSpec(slices=12, skip=frozenset({5, 6}))
    for ds in make_series(spec):
        store.put(to_bytes(ds), source="test")
    time.sleep(0.2)
    assert lifecycle.sweep() == []
    with Session(store.engine) as session:
        study = session.get(Study, spec.study_uid)
        assert study is not None
        assert study.state is StudyState.INCOMPLETE
        assert study.state_reason is not None and "gap" in study.state_reason
        assert session.exec(select(StudyEvent)).all() == []
    # The missing slices arrive: the study is whole and completes as version 1.
    for ds in make_series(
        SeriesSpec(slices=12, study_uid=spec.study_uid, series_uid=spec.series_uid)
    ):
        if ds.InstanceNumber in (6, 7):
            store.put(to_bytes(ds), source="test")
    time.sleep(0.2)
    assert lifecycle.sweep() == [spec.study_uid]
    with Session(store.engine) as session:
        study = session.get(Study, spec.study_uid)
        assert study is not None and study.version == 1 and study.state is StudyState.COMPLETE


def test_failing_subscriber_keeps_the_event_for_a_retry(store: InstanceStore) -> None:
    lifecycle = StudyLifecycle(store.engine, quiet_seconds=0.0, gap_tolerance=0.5)
    calls: list[int] = []

    def flaky(event: StudyCompleted) -> None:
        calls.append(event.event_id)
        if len(calls) == 1:
            raise RuntimeError("analysis queue unavailable")

    lifecycle.subscribe(flaky)
    for ds in make_series(SeriesSpec(slices=3)):
        store.put(to_bytes(ds), source="test")
    lifecycle.sweep()
    assert lifecycle.deliver() == 0
    with Session(store.engine) as session:
        event = session.exec(select(StudyEvent)).one()
        assert event.delivered_at is None and event.attempts == 1 and event.last_error
    assert lifecycle.deliver() == 1
    assert len(calls) == 2


def test_restart_between_arrival_and_completion_loses_nothing(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'index.db'}"
    engine = make_engine(url)
    upgrade_schema(engine, MIGRATIONS)
    store = InstanceStore(engine, tmp_path / "storage", max_instance_bytes=10_000_000)
    spec = SeriesSpec(slices=5)
    for ds in make_series(spec):
        store.put(to_bytes(ds), source="test")
    engine.dispose()  # the process goes away before the quiet period ends

    engine = make_engine(url)
    upgrade_schema(engine, MIGRATIONS)
    lifecycle = StudyLifecycle(engine, quiet_seconds=0.0, gap_tolerance=0.5)
    received: list[StudyCompleted] = []
    lifecycle.subscribe(received.append)
    assert lifecycle.sweep() == [spec.study_uid]
    lifecycle.deliver()
    assert [e.study_instance_uid for e in received] == [spec.study_uid]


def test_same_instance_in_another_transfer_syntax_is_a_duplicate_not_a_conflict(
    store: InstanceStore,
) -> None:
    """MR_small.dcm and MR_small_implicit.dcm are one instance in two encodings."""
    explicit = Path(get_testdata_file("MR_small.dcm", download=False))  # type: ignore[arg-type]
    implicit = Path(get_testdata_file("MR_small_implicit.dcm", download=False))  # type: ignore[arg-type]
    assert store.put(explicit.read_bytes(), source="a").outcome == "stored"
    assert store.put(implicit.read_bytes(), source="b").outcome == "duplicate"
    with Session(store.engine) as session:
        instance = session.exec(select(Instance)).one()
        versions = session.exec(select(InstanceVersion)).all()
    assert not instance.conflict
    assert len(versions) == 2 and "transfer syntax 1.2.840.10008.1.2" in (versions[1].note or "")


def test_files_a_crash_left_unindexed_are_swept(store: InstanceStore) -> None:
    """F8: kill -9 between the rename and the index commit leaves a .dcm nobody
    acknowledged; the start-up sweep removes it and keeps every indexed file."""
    kept = make_series(SeriesSpec(slices=1))[0]
    store.put(to_bytes(kept), source="test")
    orphan_ds = make_series(SeriesSpec(slices=1))[0]
    orphan = store.root / orphan_ds.StudyInstanceUID / orphan_ds.SeriesInstanceUID / "x.dcm"
    orphan.parent.mkdir(parents=True)
    orphan.write_bytes(to_bytes(orphan_ds))
    sibling = store.root / kept.StudyInstanceUID / kept.SeriesInstanceUID / "lost.dcm"
    sibling.write_bytes(to_bytes(orphan_ds))
    fresh = store.root / kept.StudyInstanceUID / kept.SeriesInstanceUID / "in-flight.dcm"
    started = time.time()
    for path in (orphan, sibling):
        os.utime(path, (started - 60, started - 60))
    fresh.write_bytes(b"written after the sweep began")
    os.utime(fresh, (started + 5, started + 5))
    assert store.remove_unindexed(older_than=started) == 2
    assert not orphan.exists() and not sibling.exists() and fresh.exists()
    with Session(store.engine) as session:
        row = session.get(Instance, kept.SOPInstanceUID)
        assert row is not None and store.path_of(row).exists()


def test_a_series_uid_never_joins_two_studies(store: InstanceStore) -> None:
    """F6: a new study reusing another study's SeriesInstanceUID is refused."""
    first = make_series(SeriesSpec(slices=1))[0]
    store.put(to_bytes(first), source="test")
    borrowed = make_series(SeriesSpec(slices=1, series_uid=first.SeriesInstanceUID))[0]
    with pytest.raises(SeriesInOtherStudy):
        store.put(to_bytes(borrowed), source="test")
    with Session(store.engine) as session:
        assert session.get(Study, borrowed.StudyInstanceUID) is None
    assert not (store.root / borrowed.StudyInstanceUID).exists() or not any(
        (store.root / borrowed.StudyInstanceUID).rglob("*.dcm")
    )
