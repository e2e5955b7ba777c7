import csv
import json

import pytest
from conftest import DATA, POSES

from t2p.notation import UNK, NotationError, SignText, Vocabulary, tokenize

HAMNOSYS = json.loads((DATA / "hamnosys" / "ham2pose_data.json").read_text())


@pytest.fixture(scope="module")
def vocabulary():
    return Vocabulary.build()


def test_every_real_hamnosys_string_encodes_without_unknown_tokens(vocabulary):
    unknown = vocabulary.tokens.index(UNK)
    assert len(HAMNOSYS) == 5752
    for entry in HAMNOSYS.values():
        ids = vocabulary.encode(SignText(entry["hamnosys"], "hamnosys"))
        assert unknown not in ids, entry["hamnosys"]
        assert len(ids) == len(entry["hamnosys"]) + 2  # <bos>, notation marker, one per symbol


def test_hamnosys_unicode_and_symbol_names_give_the_same_tokens(vocabulary):
    compared = 0
    for entry in HAMNOSYS.values():
        names = entry["hamnosys_text"]
        if not names or "None" in names.split(","):
            continue  # the corpus leaves some name forms incomplete
        assert vocabulary.encode(SignText(names, "hamnosys")) == vocabulary.encode(SignText(entry["hamnosys"], "hamnosys"))
        compared += 1
    assert compared > 1500


@pytest.mark.parametrize("text, fragment", [
    ("\ue001\ue020x", "invalid symbol 'x' (U+0078) at position 2"),
    ("hamflathand,hamnotasymbol", "unknown symbol name 'hamnotasymbol' at position 12"),
])
def test_bad_hamnosys_names_notation_symbol_and_position(text, fragment):
    with pytest.raises(NotationError) as error:
        tokenize(SignText(text, "hamnosys"))
    assert str(error.value).startswith("hamnosys: ")
    assert fragment in str(error.value)


def test_signwriting_samples_encode_from_swu(vocabulary):
    rows = list(csv.DictReader(open(POSES / "signwriting_samples" / "index.csv", encoding="utf-8")))
    assert len(rows) == 2
    for row in rows:
        tokens = tokenize(SignText(row["text"], "signwriting", row["videoLanguage"]))
        assert tokens[:3] == ["<bos>", f"lang:{row['videoLanguage']}", "notation:signwriting"]
        assert len(tokens) > 8
        assert vocabulary.tokens.index(UNK) not in vocabulary.encode(SignText(row["text"], "signwriting"))


def test_signwriting_fsw_and_swu_forms_agree():
    assert tokenize(SignText("M512x516S14c20489x485", "signwriting")) == tokenize(SignText("𝠃𝤒𝤖񁲡𝣻𝣷", "signwriting"))


def test_bad_signwriting_names_the_position():
    with pytest.raises(NotationError, match=r"signwriting: invalid FSW at position 8"):
        tokenize(SignText("M500x500Sxyz", "signwriting"))


def test_text_accepts_any_script_and_rejects_control_characters():
    assert tokenize(SignText("Ωб", "text", "gss"))[-2:] == ["text:Ω", "text:б"]
    with pytest.raises(NotationError, match=r"text: invalid character U\+0007 at position 1"):
        tokenize(SignText("a\x07", "text"))


def test_empty_text_is_unconditional_and_language_is_a_token():
    assert tokenize(SignText("", "text")) == ["<bos>"]
    assert tokenize(SignText("", "hamnosys", "gsg")) == ["<bos>", "lang:gsg"]


def test_unknown_notation_and_bad_language_are_clear_errors():
    with pytest.raises(NotationError, match="unknown notation"):
        tokenize(SignText("a", "klingon"))
    with pytest.raises(NotationError, match="invalid language code"):
        tokenize(SignText("a", "text", "American Sign Language"))


def test_unseen_text_characters_map_to_unknown_but_seen_ones_do_not():
    vocabulary = Vocabulary.build([SignText("ab", "text", "ase")])
    unknown = vocabulary.tokens.index(UNK)
    assert unknown not in vocabulary.encode(SignText("ba", "text", "ase"))
    assert vocabulary.encode(SignText("z", "text"))[-1] == unknown
    assert vocabulary.languages == ["ase"]
