"""`import_embeddings`: vectors made elsewhere as a finished embeddings dir (no model)."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import write_embeddings_dir, write_jsonl
from tamis.embeddings.store import embeddings_manifest, read_embeddings
from tamis.pipelines.embed import OutputConflictError, vector_type
from tamis.pipelines.import_vectors import import_embeddings
from tamis.records import InputError

N, DIM, SHARD = 23, 8, 10


@pytest.fixture
def ids() -> list[str]:
    return [f"item-{i}" for i in range(N)]


@pytest.fixture
def vectors() -> np.ndarray:
    return np.random.default_rng(0).standard_normal((N, DIM)).astype(np.float32)


def assert_bitwise(got: np.ndarray, want: np.ndarray) -> None:
    assert got.dtype == np.float32 and got.shape == want.shape
    assert np.array_equal(got.view(np.uint32), np.asarray(want, np.float32).view(np.uint32))


def assert_imported(output: Path, ids: list[str], vectors: np.ndarray) -> dict:
    got_ids, got = read_embeddings(str(output))
    assert got_ids == ids
    assert_bitwise(got, vectors)
    manifest = embeddings_manifest(str(output))
    assert manifest["stage"] == "import"
    assert manifest["counts"]["embedded"] == manifest["counts"]["records"] == len(ids)
    assert manifest["counts"]["rejected"] == 0
    assert manifest["model"]["dim"] == vectors.shape[1]
    assert manifest["model"]["model"] == "imported"
    assert len(manifest["fingerprint"]) == 20
    assert (output / "rejected.jsonl").read_text() == ""
    return manifest


def fixed_table(ids, vectors, **columns) -> pa.Table:
    flat = pa.array(np.asarray(vectors, np.float32).reshape(-1))
    embedding = pa.FixedSizeListArray.from_arrays(flat, type=vector_type(vectors.shape[1]))
    return pa.table({"id": ids, "embedding": embedding, **columns})


def write_parquet(path: Path, table: pa.Table) -> Path:
    pq.write_table(table, path)
    return path


def write_vector_jsonl(path: Path, ids, vectors, key: str = "embedding") -> Path:
    rows = [{"id": i, key: [float(x) for x in v]} for i, v in zip(ids, vectors, strict=True)]
    return write_jsonl(path, rows)


# ---------------------------------------------------------------------------------------------
# Each source kind reads back bit for bit


def test_parquet_fixed_size_list(tmp_path, ids, vectors):
    source = write_parquet(tmp_path / "v.parquet", fixed_table(ids, vectors, text=["t"] * N))
    manifest = import_embeddings(str(source), str(tmp_path / "out"), shard_size=SHARD)
    assert manifest == assert_imported(tmp_path / "out", ids, vectors)
    assert manifest["model"]["source"] == str(source)
    assert manifest["model"]["normalized"] is False
    assert manifest["parts"] == [f"part-0000{i}.parquet" for i in range(3)]
    assert manifest["source"]["vector_column"] == "embedding"


def test_parquet_variable_lists_of_doubles_become_float32(tmp_path, ids, vectors):
    table = pa.table({"key": ids, "vec": pa.array(vectors.astype(np.float64).tolist())})
    source = write_parquet(tmp_path / "v.parquet", table)
    out = tmp_path / "out"
    import_embeddings(str(source), str(out), id_column="key", shard_size=SHARD)
    assert assert_imported(out, ids, vectors)["model"]["source_dtype"] == "double"


def test_parquet_directory_and_glob_in_file_order(tmp_path, ids, vectors):
    src = tmp_path / "src"
    src.mkdir()
    write_parquet(src / "a.parquet", fixed_table(ids[:15], vectors[:15]))
    write_parquet(src / "b.parquet", fixed_table(ids[15:], vectors[15:]))
    import_embeddings(str(src), str(tmp_path / "dir"), shard_size=SHARD)
    assert_imported(tmp_path / "dir", ids, vectors)
    import_embeddings(str(src / "*.parquet"), str(tmp_path / "glob"), shard_size=SHARD)
    assert_imported(tmp_path / "glob", ids, vectors)


@pytest.mark.parametrize("name", ["v.jsonl", "v.jsonl.gz"])
def test_jsonl(tmp_path, ids, vectors, name):
    plain = write_vector_jsonl(tmp_path / "plain.jsonl", ids, vectors)
    source = tmp_path / name
    if name.endswith(".gz"):
        source.write_bytes(gzip.compress(plain.read_bytes()))
    else:
        plain.rename(source)
    import_embeddings(str(source), str(tmp_path / "out"), shard_size=SHARD)
    assert_imported(tmp_path / "out", ids, vectors)


def test_jsonl_integer_ids_become_strings(tmp_path, vectors):
    source = write_vector_jsonl(tmp_path / "v.jsonl", list(range(N)), vectors)
    import_embeddings(str(source), str(tmp_path / "out"))
    assert_imported(tmp_path / "out", [str(i) for i in range(N)], vectors)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_npy_with_text_ids(tmp_path, ids, vectors, dtype):
    np.save(tmp_path / "v.npy", vectors.astype(dtype))
    (tmp_path / "ids.txt").write_text("\n".join(ids) + "\n")
    manifest = import_embeddings(
        str(tmp_path / "v.npy"), str(tmp_path / "out"), ids=str(tmp_path / "ids.txt")
    )
    assert_imported(tmp_path / "out", ids, vectors)
    assert manifest["source"]["ids"] == str(tmp_path / "ids.txt")


@pytest.mark.parametrize("kind", ["jsonl", "parquet"])
def test_npy_with_id_table(tmp_path, ids, vectors, kind):
    np.save(tmp_path / "v.npy", vectors)
    if kind == "jsonl":
        id_file = write_jsonl(tmp_path / "ids.jsonl", [{"id": i, "n": 1} for i in ids])
    else:
        id_file = write_parquet(tmp_path / "ids.parquet", pa.table({"id": ids}))
    import_embeddings(str(tmp_path / "v.npy"), str(tmp_path / "out"), ids=str(id_file))
    assert_imported(tmp_path / "out", ids, vectors)


def test_hf_dataset_dir(tmp_path, ids, vectors):
    datasets = pytest.importorskip("datasets")
    features = datasets.Features(
        {
            "id": datasets.Value("string"),
            "text": datasets.Value("string"),
            "emb": datasets.Sequence(datasets.Value("float32"), length=DIM),
        }
    )
    ds = datasets.Dataset.from_dict(
        {"id": ids, "text": ["t"] * N, "emb": vectors.tolist()}, features=features
    )
    ds.save_to_disk(str(tmp_path / "hf"))
    import_embeddings(str(tmp_path / "hf"), str(tmp_path / "out"), shard_size=SHARD)
    assert_imported(tmp_path / "out", ids, vectors)


def test_same_as_write_vectors_dir_and_reimportable(tmp_path, ids, vectors):
    reference = Path(write_embeddings_dir(tmp_path / "ref", vectors, SHARD, ids))
    np.save(tmp_path / "v.npy", vectors)
    (tmp_path / "ids.txt").write_text("\n".join(ids))
    out = tmp_path / "out"
    import_embeddings(str(tmp_path / "v.npy"), str(out), ids=str(tmp_path / "ids.txt"))
    ref_ids, ref_vectors = read_embeddings(str(reference))
    got_ids, got_vectors = read_embeddings(str(out))
    assert got_ids == ref_ids
    assert_bitwise(got_vectors, ref_vectors)
    # Same part layout (schema without the per-shard stats).
    ref_schema = pq.read_schema(reference / "part-00000.parquet").remove_metadata()
    assert pq.read_schema(out / "part-00000.parquet").remove_metadata() == ref_schema
    # An embeddings dir is itself a source (its parts, not its manifest).
    import_embeddings(str(reference), str(tmp_path / "again"), shard_size=SHARD)
    assert_imported(tmp_path / "again", ids, vectors)


def test_fingerprint_is_the_vectors_not_the_format(tmp_path, ids, vectors):
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    np.save(tmp_path / "v.npy", unit)
    (tmp_path / "ids.txt").write_text("\n".join(ids))
    a = import_embeddings(
        str(tmp_path / "v.npy"), str(tmp_path / "a"), ids=str(tmp_path / "ids.txt")
    )
    source = write_parquet(tmp_path / "v.parquet", fixed_table(ids, unit))
    b = import_embeddings(str(source), str(tmp_path / "b"))
    assert a["fingerprint"] == b["fingerprint"]
    assert a["model"]["normalized"] is b["model"]["normalized"] is True


def test_vector_column_chosen_when_several(tmp_path, ids, vectors):
    table = fixed_table(ids, vectors, other=pa.array((vectors * 2).tolist()))
    source = write_parquet(tmp_path / "v.parquet", table)
    with pytest.raises(InputError) as err:
        import_embeddings(str(source), str(tmp_path / "out"))
    assert str(source) in str(err.value)
    assert "embedding, other" in str(err.value)
    import_embeddings(str(source), str(tmp_path / "out"), vector_column="other")
    assert_imported(tmp_path / "out", ids, vectors * 2)


# ---------------------------------------------------------------------------------------------
# The output


def test_same_source_rewrites_other_source_conflicts(tmp_path, ids, vectors):
    out = tmp_path / "out"
    source = write_parquet(tmp_path / "v.parquet", fixed_table(ids, vectors))
    first = import_embeddings(str(source), str(out), shard_size=5)
    assert len(first["parts"]) == 5
    again = import_embeddings(str(source), str(out), shard_size=SHARD)  # same vectors: rewrite
    assert again["fingerprint"] == first["fingerprint"]
    assert sorted(p.name for p in out.glob("part-*")) == again["parts"]  # no stale parts

    other = write_parquet(tmp_path / "w.parquet", fixed_table(ids[:4], vectors[:4]))
    with pytest.raises(OutputConflictError) as err:
        import_embeddings(str(other), str(out))
    assert str(out) in str(err.value) and str(source) in str(err.value)
    assert_imported(out, ids, vectors)  # untouched
    import_embeddings(str(other), str(out), overwrite=True)
    assert_imported(out, ids[:4], vectors[:4])
    assert [p.name for p in out.glob("part-*")] == ["part-00000.parquet"]


def test_embed_output_conflicts(tmp_path, ids, vectors):
    out = tmp_path / "out"
    write_embeddings_dir(out, vectors, SHARD, ids)
    manifest = json.loads((out / "manifest.json").read_text())
    (out / "manifest.json").write_text(json.dumps({**manifest, "stage": "embed"}))
    source = write_parquet(tmp_path / "v.parquet", fixed_table(ids, vectors))
    with pytest.raises(OutputConflictError, match="tamis embed"):
        import_embeddings(str(source), str(out))


# ---------------------------------------------------------------------------------------------
# Bad inputs: an InputError naming the file and the bad ids or column


def raises(source, *needles, **kwargs) -> str:
    with pytest.raises(InputError) as err:
        import_embeddings(str(source), str(Path(source).parent / "out"), **kwargs)
    message = str(err.value)
    for needle in (str(source), *needles):
        assert needle in message, message
    assert not (Path(source).parent / "out").exists()  # checked before writing
    return message


def test_ragged_rows(tmp_path):
    rows = [{"id": "a", "v": [1, 2, 3]}, {"id": "b", "v": [1, 2]}, {"id": "c", "v": [4, 5, 6]}]
    rows.append({"id": "d", "v": [1, 2, 3, 4]})
    source = write_jsonl(tmp_path / "v.jsonl", rows)
    raises(source, "'v'", "2 rows", "3 values", "'a'", "'b' has 2", "'d' has 4")


def test_dimension_zero(tmp_path):
    source = write_jsonl(tmp_path / "v.jsonl", [{"id": "a", "v": []}, {"id": "b", "v": []}])
    raises(source, "'v'", "'a'", "dimension >= 1")
    np.save(tmp_path / "v.npy", np.zeros((3, 0), np.float32))
    (tmp_path / "ids.txt").write_text("a\nb\nc\n")
    raises(tmp_path / "v.npy", "dimension 0", ids=str(tmp_path / "ids.txt"))


def test_duplicate_ids(tmp_path, vectors):
    dup = ["x", "y", "x", "z", "y", "x"] + [f"u{i}" for i in range(N - 6)]
    source = write_parquet(tmp_path / "v.parquet", fixed_table(dup, vectors))
    raises(source, "'id'", "2 ids occur more than once", "'x' (3 rows)", "'y' (2 rows)")
    np.save(tmp_path / "v.npy", vectors)
    (tmp_path / "ids.txt").write_text("\n".join(dup))
    raises(
        tmp_path / "v.npy", str(tmp_path / "ids.txt"), "'x' (3 rows)", ids=str(tmp_path / "ids.txt")
    )


def test_null_ids(tmp_path, ids, vectors):
    source = write_parquet(tmp_path / "v.parquet", fixed_table(ids[:2] + [None] + ids[3:], vectors))
    raises(source, "'id'", "1 null ids", "row 2")
    id_file = write_parquet(tmp_path / "ids.parquet", pa.table({"id": [None] + ids[1:]}))
    np.save(tmp_path / "v.npy", vectors)
    raises(tmp_path / "v.npy", str(id_file), "'id'", "row 0", ids=str(id_file))


def test_null_vectors(tmp_path):
    rows = [{"id": "a", "v": [1.0, 2.0]}, {"id": "b", "v": None}, {"id": "c", "v": [1.0, None]}]
    source = write_jsonl(tmp_path / "v.jsonl", rows)
    raises(source, "'v'", "1 null vectors", "'b'")
    rows[1]["v"] = [3.0, 4.0]
    source = write_jsonl(tmp_path / "w.jsonl", rows)
    raises(source, "'v'", "1 vectors hold null values", "'c'")


def test_nan_and_inf_rows(tmp_path, ids, vectors):
    bad = vectors.copy()
    bad[3, 1], bad[7, 0], bad[9, 5] = np.nan, np.inf, -np.inf
    source = write_parquet(tmp_path / "v.parquet", fixed_table(ids, bad))
    raises(source, "'embedding'", "3 vectors hold NaN or inf", "'item-3', 'item-7', 'item-9'")
    np.save(tmp_path / "v.npy", bad.astype(np.float64))
    (tmp_path / "ids.txt").write_text("\n".join(ids))
    raises(
        tmp_path / "v.npy", "3 vectors hold NaN or inf", "'item-3'", ids=str(tmp_path / "ids.txt")
    )
    # A float64 beyond float32's range would become inf: refused too.
    huge = vectors.astype(np.float64)
    huge[5, 0] = 1e300
    np.save(tmp_path / "h.npy", huge)
    raises(
        tmp_path / "h.npy", "1 vectors hold NaN or inf", "'item-5'", ids=str(tmp_path / "ids.txt")
    )


def test_no_rows(tmp_path):
    source = write_parquet(tmp_path / "v.parquet", fixed_table([], np.zeros((0, 4), np.float32)))
    raises(source, "no rows")
    np.save(tmp_path / "v.npy", np.zeros((0, 4), np.float32))
    (tmp_path / "ids.txt").write_text("")
    raises(tmp_path / "v.npy", "no rows", ids=str(tmp_path / "ids.txt"))


def test_npy_id_count_mismatch(tmp_path, ids, vectors):
    np.save(tmp_path / "v.npy", vectors)
    (tmp_path / "ids.txt").write_text("\n".join(ids[:-2]))
    raises(
        tmp_path / "v.npy",
        str(tmp_path / "ids.txt"),
        f"{N} vectors",
        f"{N - 2} ids",
        ids=str(tmp_path / "ids.txt"),
    )
    raises(tmp_path / "v.npy", "ids=")  # no ids at all


def test_missing_columns(tmp_path, ids, vectors):
    table = fixed_table(ids, vectors, text=["t"] * N).rename_columns(["key", "embedding", "text"])
    source = write_parquet(tmp_path / "v.parquet", table)
    raises(source, "id column 'id'", "columns: key (string), embedding", "text (string)")
    raises(source, "vector column 'vec'", "columns: key", id_column="key", vector_column="vec")
    raises(source, "'text' is string, not a list of numbers", id_column="key", vector_column="text")
    no_vectors = write_parquet(tmp_path / "w.parquet", pa.table({"id": ids, "text": ["t"] * N}))
    raises(no_vectors, "no column of number lists", "columns: id (string), text (string)")


def test_unreadable_files(tmp_path, ids, vectors):
    (tmp_path / "v.parquet").write_bytes(b"not parquet at all")
    raises(tmp_path / "v.parquet", "cannot read as Parquet")
    (tmp_path / "v.jsonl").write_text('{"id": "a", "v": [1, 2]}\n{"id": "b", "v": [1,\n')
    raises(tmp_path / "v.jsonl")
    np.save(tmp_path / "v.npy", vectors)
    (tmp_path / "v.npy").write_bytes((tmp_path / "v.npy").read_bytes()[:100])
    (tmp_path / "ids.txt").write_text("\n".join(ids))
    raises(tmp_path / "v.npy", "cannot read as a .npy array", ids=str(tmp_path / "ids.txt"))
    (tmp_path / "v.csv").write_text("id,v\n")
    raises(tmp_path / "v.csv", "cannot tell the format")
    (tmp_path / "s.npy").write_bytes(b"\x93NUMPY garbage")
    raises(tmp_path / "s.npy", "cannot read", ids=str(tmp_path / "ids.txt"))


def test_ids_only_for_npy(tmp_path, ids, vectors):
    source = write_parquet(tmp_path / "v.parquet", fixed_table(ids, vectors))
    raises(source, "ids= is only for .npy", "'id'", ids=str(tmp_path / "ids.txt"))
