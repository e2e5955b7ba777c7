import csv
import json

import pytest
from conftest import DATA, POSES

from t2p.notation import (HAMNOSYS_CLASSES, SIGNWRITING_HAND_GROUPS, UNK, NotationError, SignText, Vocabulary,
                          hamnosys_symbols, signwriting_hand_group, token_parts, tokenize)

HAMNOSYS = json.loads((DATA / "hamnosys" / "ham2pose_data.json").read_text())


@pytest.fixture(scope="module")
def vocabulary():
    return Vocabulary.build()


def test_every_real_hamnosys_string_encodes_without_unknown_tokens(vocabulary):
    unknown = vocabulary.tokens.index(UNK)
    assert len(HAMNOSYS) == 5752
    for entry in HAMNOSYS.values():
        ids = vocabulary.encode(SignText(entry["hamnosys"], "hamnosys"))
        assert unknown not in [token[0] for token in ids], entry["hamnosys"]
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
        assert vocabulary.tokens.index(UNK) not in [token[0] for token in vocabulary.encode(SignText(row["text"], "signwriting"))]


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
    assert (unknown,) not in vocabulary.encode(SignText("ba", "text", "ase"))
    assert vocabulary.encode(SignText("z", "text"))[-1] == (unknown,)
    assert vocabulary.languages == ["ase"]


def test_a_signwriting_symbol_is_one_token_made_of_its_parts():
    tokens = token_parts(SignText("M518x529S14c20481x471S27106503x489", "signwriting", "ase"))
    assert tokens[:4] == [("<bos>",), ("lang:ase",), ("notation:signwriting",), ("signwriting.box:M",)]
    assert tokens[4] == ("signwriting:14c", "signwriting.category:hand", "signwriting.fill:hand:2",
                         "signwriting.angle:hand:0", "signwriting.mirrored:hand:0", "signwriting.x:-1", "signwriting.y:-2",
                         "signwriting.hand_group:five_fingers")
    assert tokens[5][:5] == ("signwriting:271", "signwriting.category:movement", "signwriting.fill:movement:0",
                             "signwriting.angle:movement:6", "signwriting.mirrored:movement:0")


def test_a_handshape_turned_or_mirrored_keeps_its_base_and_its_palm():
    """Rotations 8-f are 0-7 drawn for the other hand: the same angle, mirrored."""
    (*_, turned), (*_, mirrored) = (token_parts(SignText(f"M518x529S14c{rotation}481x471", "signwriting"))
                                    for rotation in ("23", "2b"))
    assert turned[:4] == ("signwriting:14c", "signwriting.category:hand", "signwriting.fill:hand:2", "signwriting.angle:hand:3")
    assert mirrored[:5] == turned[:4] + ("signwriting.mirrored:hand:1",)


def test_a_symbol_never_seen_whole_is_known_by_its_parts():
    """A fill and rotation of a base never drawn together in training: every part has its id."""
    vocabulary = Vocabulary.build([SignText("M518x529S14c20481x471", "signwriting")])
    (*_, symbol) = vocabulary.encode(SignText("M518x529S14c5f481x471", "signwriting"))
    assert len(symbol) == 8 and vocabulary.unknown_id not in symbol


def test_handshapes_of_the_same_fingers_share_their_group():
    """ISWA's hand groups: every hand base in exactly one, by the fingers its Unicode name selects."""
    import unicodedata
    first_names = {name: unicodedata.name(chr(0x1D800 + first - 0x100)) for first, name in SIGNWRITING_HAND_GROUPS}
    assert first_names["index"] == "SIGNWRITING HAND-FIST INDEX"
    assert first_names["five_fingers"] == "SIGNWRITING HAND-FLAT FIVE FINGERS SPREAD"
    assert first_names["thumb"] == "SIGNWRITING HAND-FIST THUMB"
    groups = [signwriting_hand_group(base) for base in range(0x100, 0x205)]
    assert groups[0] == "index" and groups[-1] == "thumb" and len(set(groups)) == 10
    spread, claw, four = (token_parts(SignText(f"M518x529S{base}20481x471", "signwriting"))[-1]
                          for base in ("14c", "15a", "144"))
    assert spread[0] != claw[0] and spread[-1] == claw[-1] == "signwriting.hand_group:five_fingers"
    assert four[-1] == "signwriting.hand_group:four_fingers"
    with pytest.raises(ValueError):
        signwriting_hand_group(0x205)  # a movement


def test_every_hamnosys_symbol_has_exactly_one_class_and_directions_are_shared():
    classes = [name for names in HAMNOSYS_CLASSES.values() for name in names.split()]
    assert sorted(f"ham{name}" for name in classes) == sorted(hamnosys_symbols())  # all 209, once each
    finger, palm, move = (token_parts(SignText(name, "hamnosys"))[-1] for name in ("hamextfingeru", "hampalmu", "hammoveu"))
    assert finger[1:] == ("hamnosys.class:extended_finger_direction", "hamnosys.direction:u")
    assert palm[2] == move[2] == finger[2]
    assert token_parts(SignText("hamflathand", "hamnosys"))[-1] == ("hamnosys:hamflathand", "hamnosys.class:handshape")


def test_a_vocabulary_of_whole_tokens_reads_as_models_before_parts_did():
    whole = Vocabulary.build([SignText("ab", "text")], parts=False)
    assert not whole.parts and Vocabulary.build().parts
    ids = whole.encode(SignText("M518x529S14c20481x471", "signwriting"))
    assert [whole.tokens[token] for (token,) in ids] == tokenize(SignText("M518x529S14c20481x471", "signwriting"))


def test_a_handshape_edit_changes_the_hand_symbol_and_nothing_else():
    from t2p.evaluation.notation import handshapes, with_handshape
    sign = SignText("M518x529S14c20481x471S27106503x489", "signwriting", "ase")
    assert handshapes(sign) == ["14c"]
    edited = with_handshape(sign, "1f7")
    assert edited == SignText("M518x529S1f720481x471S27106503x489", "signwriting", "ase")
    assert token_parts(edited)[4][1:-1] == token_parts(sign)[4][1:-1]  # fill, angle, mirroring and place kept
    assert token_parts(edited)[4][-1] == "signwriting.hand_group:thumb"  # the new handshape's fingers
    ham = SignText("hamflathand,hamthumboutmod,hamextfingeru,hampalmd,hamchest,hammoveo", "hamnosys")
    assert handshapes(ham) == ["hamflathand"]
    assert tokenize(with_handshape(ham, "hamfist"))[2:] == ["hamnosys:hamfist"] + tokenize(ham)[3:]
