"""Notations: turn a written sign into tokens, one small encoder per notation, chosen by name.

- `hamnosys`: one token per HamNoSys symbol. Accepts the Unicode form (Private Use Area
  U+E000–U+E0F1 plus the few ASCII symbols HamNoSys uses: space , . ! ? { | }) and the symbol-name
  form (`hamflathand,hamextfingeru,...`). Both forms give the same tokens. The symbol table is the
  one shipped by the `hamnosys` package (HamNoSys 4).
- `signwriting`: FSW or SWU strings, tokenised by the `signwriting` package's tokenizer.
- `text`: Unicode characters (letters of any script, glosses, words), NFD-normalised: a letter
  and its combining diacritics are separate tokens (`tokenize_text`).

Each input may carry a sign-language code (ISO 639-3, e.g. `ase`) that becomes a token.
Empty text is allowed: it asks for unconditional generation (the model was trained with the text
dropped for some examples, which is also what classifier-free guidance uses).

A token reaches the model as its **parts** (`token_parts`), and its embedding is the sum of theirs:
a SignWriting symbol is one token made of its base symbol, ISWA category, fill, angle, mirroring,
place in the sign box and, for a hand, the ISWA group of the fingers it selects; a HamNoSys symbol is itself, its class (handshape, orientation,
location, ...) and, for the directional symbols, its direction. So a handshape seen in one sign
is the same parts in every sign that uses it, whatever its rotation or language (docs/quality.md,
Round V, measured why). Vocabularies of models trained before have no parts (`Vocabulary.parts`
is False) and keep the tokens they were trained with: the `signwriting` package's tokens, one per
box, base, fill, rotation and coordinate.
"""
from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from functools import lru_cache
from importlib.resources import files
from typing import Iterable

from signwriting.formats.swu import is_swu
from signwriting.formats.swu_to_fsw import swu2fsw
from signwriting.tokenizer import SignWritingTokenizer

NOTATIONS = ("hamnosys", "signwriting", "text")
PAD, BOS, UNK = "<pad>", "<bos>", "<unk>"
SPECIAL_TOKENS = (PAD, BOS, UNK)
PARTS = "<parts>"  # in a vocabulary: its entries are parts, each token the sum of its own


class NotationError(ValueError):
    """Input that is not valid in its notation; the message names notation, symbol and position."""

    def __init__(self, notation: str, message: str):
        super().__init__(f"{notation}: {message}")
        self.notation = notation


@dataclass(frozen=True)
class SignText:
    """A sign as written: the text, its notation, and optionally its sign language (ISO 639-3)."""
    text: str
    notation: str = "text"
    language: str | None = None


# --- HamNoSys -------------------------------------------------------------------------------

@lru_cache(maxsize=1)
def hamnosys_symbols() -> dict[str, str]:
    """Symbol name -> character, from the table shipped in the `hamnosys` package."""
    table: dict[str, str] = {}
    text = files("hamnosys.data").joinpath("conversion_dict.txt").read_text(encoding="utf-8")
    for line in text.splitlines():
        match = re.match(r"\s*(\w+)\s*,\s*([0-9A-Fa-f]{4})\b", line)
        if match:
            table[match[1].lower()] = chr(int(match[2], 16))
    return table


@lru_cache(maxsize=1)
def _hamnosys_names() -> dict[str, str]:
    return {char: name for name, char in hamnosys_symbols().items()}


def tokenize_hamnosys(text: str) -> list[str]:
    """HamNoSys (Unicode or comma-separated symbol names) -> symbol names."""
    names = _hamnosys_names()
    if re.fullmatch(r"\s*ham\w+(\s*,\s*ham\w*)*\s*,?\s*", text):
        symbols = hamnosys_symbols()
        tokens = []
        position = 0
        for part in text.split(","):
            name = part.strip().lower()
            if name and name not in symbols:
                raise NotationError("hamnosys", f"unknown symbol name {name!r} at position {position} "
                                                f"(symbol {len(tokens) + 1})")
            if name:
                tokens.append(name)
            position += len(part) + 1
        return tokens
    tokens = []
    for position, char in enumerate(text):
        if char not in names:
            raise NotationError("hamnosys", f"invalid symbol {char!r} (U+{ord(char):04X}) at position {position}; "
                                            "expected HamNoSys Unicode (U+E000–U+E0F1) or symbol names")
        tokens.append(names[char])
    return tokens


# --- SignWriting ----------------------------------------------------------------------------

_FSW_SYMBOL = r"S[123][0-9a-f]{2}[0-5][0-9a-f]"
_FSW_SIGN = re.compile(rf"(A({_FSW_SYMBOL})+)?[BLMR]\d{{3}}x\d{{3}}({_FSW_SYMBOL}\d{{3}}x\d{{3}})*")


@lru_cache(maxsize=1)
def _signwriting_tokenizer() -> SignWritingTokenizer:
    return SignWritingTokenizer()


def signwriting_vocabulary() -> list[str]:
    return list(SignWritingTokenizer.tokens())


def tokenize_signwriting(text: str) -> list[str]:
    """FSW or SWU -> the `signwriting` package's tokens (box, symbol, column, row, positions)."""
    fsw = swu2fsw(text) if text and is_swu(text.strip()) else text
    position = 0
    for sign in fsw.split(" "):
        if sign:
            match = _FSW_SIGN.match(sign)
            end = match.end() if match else 0
            if end != len(sign):
                raise NotationError("signwriting", f"invalid FSW at position {position + end}: "
                                                   f"{sign[end:end + 8]!r} in sign {sign!r}")
        position += len(sign) + 1
    return list(_signwriting_tokenizer().text_to_tokens(fsw)) if fsw.strip() else []


# --- The parts of a symbol -------------------------------------------------------------------

# HamNoSys 4's symbol classes, by the sections of the HamNoSys 4 documentation (and the DGS-Korpus
# HamNoSys4TeX package's headings); every one of the 209 symbols of the `hamnosys` package's table
# is in exactly one (tests/test_notation.py). Judgement calls: `hamarmextended` and `hambehind` are
# distances (location), `hambetween` joins two handshapes or two locations (grouping),
# `hamreplace` changes a handshape or orientation (movement), `hamalternatingmotion` relates the
# two hands (symmetry), `hamorirelative` marks an orientation (palm orientation).
HAMNOSYS_CLASSES = {
    "handshape": "fist flathand finger2 finger23 finger23spread finger2345 pinch12 pinchall pinch12open cee12 "
                 "ceeall ceeopen",
    "handshape_modifier": "thumboutmod thumbacrossmod thumbopenmod fingerstraightmod fingerbendmod fingerhookmod "
                          "doublebent doublehooked",
    "extended_finger_direction": "extfingeru extfingerur extfingerr extfingerdr extfingerd extfingerdl extfingerl "
                                 "extfingerul extfingerol extfingero extfingeror extfingeril extfingeri extfingerir "
                                 "extfingerui extfingerdi extfingerdo extfingeruo",
    "palm_orientation": "palmu palmur palmr palmdr palmd palmdl palml palmul orirelative",
    "location": "head headtop forehead eyebrows eyes nose nostrils ear earlobe cheek lips tongue teeth chin underchin "
                "neck shouldertop shoulders chest stomach belowstomach neutralspace upperarm elbow elbowinside "
                "lowerarm wristback wristpulse thumbball palm handback thumbside pinkyside thumb indexfinger "
                "middlefinger ringfinger pinky fingertip fingernail fingerpad fingermidjoint fingerbase fingerside "
                "lrbeside lrat armextended behind",
    "contact": "close touch interlock cross brushing",
    "movement": "moveu moveur mover movedr moved movedl movel moveul moveol moveo moveor moveil movei moveir "
                "moveui movedi movedo moveuo circleo circlei circled circleu circlel circler circleul circledr "
                "circleur circledl circleol circleir circleor circleil circleui circledo circleuo circledi "
                "fingerplay nodding swinging twisting stircw stirccw replace nomotion clocku clockul clockl "
                "clockdl clockd clockdr clockr clockur clockfull arcl arcu arcr arcd wavy zigzag ellipseh "
                "ellipseur ellipsev ellipseul increasing decreasing",
    "manner_repetition": "smallmod largemod fast slow tense rest halt repeatfromstart repeatfromstartseveral "
                         "repeatcontinue repeatcontinueseveral repeatreverse",
    "symmetry": "symmpar symmlr nondominant nonipsi alternatingmotion",
    "grouping": "space exclaim comma fullstop query altbegin metaalt altend seqbegin seqend parbegin parend "
                "fusionbegin fusionend plus between",
    "other": "coreftag corefref etc mime version40 wristtopulse wristtoback wristtothumb wristtopinky movecross "
             "movex",
}
HAMNOSYS_CLASS = {f"ham{name}": kind for kind, names in HAMNOSYS_CLASSES.items() for name in names.split()}
# symbols named by a direction (up, down, left, right, out, in and their combinations): the finger
# direction "u" and the movement "u" share the direction's part
_HAMNOSYS_DIRECTED = re.compile(r"ham(extfinger|palm|move|circle|clock|arc)(u|d|l|r|o|i|ur|ul|dr|dl|ol|or|il|ir|ui|"
                                r"uo|di|do)$")

# ISWA 2010's categories of SignWriting base symbols (inclusive ranges), checked against the
# `signwriting` package's font: every base in them exists and none outside
SIGNWRITING_CATEGORIES = (("hand", 0x100, 0x204), ("movement", 0x205, 0x2F6), ("dynamics", 0x2F7, 0x2FE),
                          ("head", 0x2FF, 0x36C), ("body", 0x36D, 0x37E), ("location", 0x37F, 0x386),
                          ("punctuation", 0x387, 0x38B))
# ISWA 2010's ten groups of hand symbols, by the fingers they select (each named here by its first
# symbol's Unicode name; the first bases as in Sutton's SignMaker alphabets): a handshape never seen
# in training shares its group's part with the seen handshapes of the same fingers
SIGNWRITING_HAND_GROUPS = ((0x100, "index"), (0x10E, "index_middle"), (0x11E, "index_middle_thumb"),
                           (0x144, "four_fingers"), (0x14C, "five_fingers"), (0x186, "index_middle_ring"),
                           (0x1A4, "index_middle_little"), (0x1BA, "index_ring_little"),
                           (0x1CD, "middle_ring_little"), (0x1F5, "thumb"))
# a symbol's place in its sign box, in steps of this many FSW units (the fingerspelling lexicon's
# hand moves by 3 units from one language's drawing to another's, a hand at the chin and one at the
# chest are 40 or more apart), up to this many steps from the centre
SIGNWRITING_PLACE_STEP, SIGNWRITING_PLACE_STEPS = 15, 16


def signwriting_category(base: int) -> str:
    return next(name for name, first, last in SIGNWRITING_CATEGORIES if first <= base <= last)


def signwriting_hand_group(base: int) -> str:
    """The ISWA group (selected fingers) of a hand symbol's base."""
    if signwriting_category(base) != "hand":
        raise ValueError(f"S{base:03x} is not a hand symbol")
    return [name for first, name in SIGNWRITING_HAND_GROUPS if first <= base][-1]


def signwriting_symbol_parts(key: str, x: int, y: int) -> tuple[str, ...]:
    """An FSW symbol (`S14c20`) at (x, y) -> its parts: base, category, fill, angle (rotation
    modulo 8, in 45 degree steps), mirrored (rotations 8-f are 0-7 mirrored: the other hand),
    place in the sign box (from its centre, 500x500, in SIGNWRITING_PLACE_STEP units) and, for a
    hand, its ISWA group. Fill and angle are read per category: a hand's fill is its palm's facing,
    a movement's which hand moves."""
    base, fill, rotation = int(key[1:4], 16), int(key[4], 16), int(key[5], 16)
    category = signwriting_category(base)

    def place(value: int) -> int:
        return max(-SIGNWRITING_PLACE_STEPS, min(SIGNWRITING_PLACE_STEPS, round((value - 500) / SIGNWRITING_PLACE_STEP)))
    return (f"signwriting:{key[1:4]}", f"signwriting.category:{category}", f"signwriting.fill:{category}:{fill}",
            f"signwriting.angle:{category}:{rotation % 8}", f"signwriting.mirrored:{category}:{rotation // 8}",
            f"signwriting.x:{place(x)}", f"signwriting.y:{place(y)}") + \
        ((f"signwriting.hand_group:{signwriting_hand_group(base)}",) if category == "hand" else ())


def hamnosys_symbol_parts(name: str) -> tuple[str, ...]:
    """A HamNoSys symbol name -> itself, its class and, for a directional symbol, its direction."""
    parts = (f"hamnosys:{name}", f"hamnosys.class:{HAMNOSYS_CLASS[name]}")
    directed = _HAMNOSYS_DIRECTED.match(name)
    return parts + (f"hamnosys.direction:{directed[2]}",) if directed else parts


def signwriting_symbols(text: str) -> list[tuple[str, int, int] | str]:
    """FSW or SWU -> per sign, its box letter, then each symbol as (key, x, y); checked as
    `tokenize_signwriting` checks it."""
    from signwriting.formats.fsw_to_sign import fsw_to_sign
    tokenize_signwriting(text)  # the notation's own error, naming the position
    fsw = swu2fsw(text) if text and is_swu(text.strip()) else text
    symbols: list[tuple[str, int, int] | str] = []
    for sign in fsw.split():
        parsed = fsw_to_sign(sign)
        symbols.append(parsed["box"]["symbol"])
        symbols += [(symbol["symbol"], *symbol["position"]) for symbol in parsed["symbols"]]
    return symbols


def part_vocabulary() -> list[str]:
    """Every part the fixed notations have: HamNoSys symbols, classes and directions; SignWriting
    boxes, bases, categories, fills, angles, mirroring and places."""
    names = list(hamnosys_symbols())
    parts = [f"hamnosys:{name}" for name in names]
    parts += [f"hamnosys.class:{kind}" for kind in HAMNOSYS_CLASSES]
    parts += sorted({part for name in names for part in hamnosys_symbol_parts(name)[2:]})
    parts += [f"signwriting.box:{box}" for box in "BLMR"]
    for category, first, last in SIGNWRITING_CATEGORIES:
        parts += [f"signwriting:{base:03x}" for base in range(first, last + 1)]
        parts.append(f"signwriting.category:{category}")
        parts += [f"signwriting.fill:{category}:{fill}" for fill in range(6)]
        parts += [f"signwriting.angle:{category}:{angle}" for angle in range(8)]
        parts += [f"signwriting.mirrored:{category}:{mirrored}" for mirrored in range(2)]
    parts += [f"signwriting.hand_group:{name}" for _, name in SIGNWRITING_HAND_GROUPS]
    steps = range(-SIGNWRITING_PLACE_STEPS, SIGNWRITING_PLACE_STEPS + 1)
    parts += [f"signwriting.{axis}:{step}" for axis in "xy" for step in steps]
    return parts


def token_parts(sign: SignText) -> list[tuple[str, ...]]:
    """A sign -> its tokens, each as the parts its embedding is the sum of (the first part is the
    token itself: the symbol, letter, language or marker); see the module's docstring."""
    tokens = tokenize(sign)  # every check, and the tokens that have a single part
    if sign.notation == "text" or len(tokens) == 1 or not tokens[-1].startswith(f"{sign.notation}:"):
        return [(token,) for token in tokens]
    head = [(token,) for token in tokens if not token.startswith(f"{sign.notation}:")]
    if sign.notation == "hamnosys":
        return head + [hamnosys_symbol_parts(name) for name in TOKENIZERS["hamnosys"](sign.text)]
    return head + [(f"signwriting.box:{symbol}",) if isinstance(symbol, str) else signwriting_symbol_parts(*symbol)
                   for symbol in signwriting_symbols(sign.text)]


# --- Text -----------------------------------------------------------------------------------

def tokenize_text(text: str) -> list[str]:
    """Plain text or gloss -> NFD characters (a letter and its combining diacritics are separate
    tokens); control and unassigned characters are errors.

    Decomposed, "Ŕ" is "R" + a combining acute, shared with every language that writes accents: a
    letter never seen in training still tells what it is made of (its base letter, that it has a
    diacritic, which fingerspelling often signs with a movement of its own). Measured on held-out
    letters, the length predictor's error fell from 3.11 to 2.90 frames (docs/quality.md)."""
    text = unicodedata.normalize("NFD", text)
    for position, char in enumerate(text):
        if unicodedata.category(char) in ("Cc", "Cs", "Cn") and char not in " ":
            raise NotationError("text", f"invalid character U+{ord(char):04X} at position {position}")
    return list(text)


TOKENIZERS = {"hamnosys": tokenize_hamnosys, "signwriting": tokenize_signwriting, "text": tokenize_text}


def tokenize(sign: SignText) -> list[str]:
    """A sign -> namespaced tokens: `<bos>`, `lang:xxx`, `notation:...` and the notation's symbols."""
    if sign.notation not in TOKENIZERS:
        raise NotationError(sign.notation, f"unknown notation; choose one of {', '.join(NOTATIONS)}")
    if sign.language is not None and not re.fullmatch(r"[a-z]{2,3}", sign.language):
        raise NotationError(sign.notation, f"invalid language code {sign.language!r}; expected ISO 639-3 like 'ase'")
    symbols = TOKENIZERS[sign.notation](sign.text)
    tokens = [BOS]
    if sign.language:
        tokens.append(f"lang:{sign.language}")
    if symbols:
        tokens.append(f"notation:{sign.notation}")
        tokens.extend(f"{sign.notation}:{symbol}" for symbol in symbols)
    return tokens


@dataclass(frozen=True)
class Vocabulary:
    """Token strings (or, with `parts`, part strings) <-> ids. Fixed notations (HamNoSys,
    SignWriting) are always present; text characters and languages come from the training data.
    Unseen characters map to `<unk>`."""
    tokens: tuple[str, ...]

    @classmethod
    def build(cls, signs: Iterable[SignText] = (), parts: bool = True) -> "Vocabulary":
        """The vocabulary of these signs: of parts (`token_parts`; the default) or, `parts=False`,
        of whole tokens as models before parts had."""
        entries: list[str] = list(SPECIAL_TOKENS) + ([PARTS] if parts else [])
        entries += [f"notation:{name}" for name in NOTATIONS]
        if parts:
            entries += part_vocabulary()
        else:
            entries += [f"hamnosys:{name}" for name in hamnosys_symbols()]
            entries += [f"signwriting:{token}" for token in signwriting_vocabulary()]
        seen = set(entries)
        for sign in signs:
            for token in (token_parts(sign) if parts else [(token,) for token in tokenize(sign)]):
                for entry in token:
                    if entry not in seen:
                        seen.add(entry)
                        entries.append(entry)
        return cls(tuple(entries))

    def __len__(self) -> int:
        return len(self.tokens)

    @property
    def parts(self) -> bool:
        """Whether a token is the sum of its parts (models since parts) or one entry of its own."""
        return PARTS in self._index

    @property
    def _index(self) -> dict[str, int]:
        index = self.__dict__.get("_cached_index")
        if index is None:
            index = {token: i for i, token in enumerate(self.tokens)}
            object.__setattr__(self, "_cached_index", index)
        return index

    @property
    def unknown_id(self) -> int:
        return self._index[UNK]

    @property
    def bos_id(self) -> int:
        """`<bos>`: every text's first token, and all there is of an empty (unconditional) one."""
        return self._index[BOS]

    def symbol_mask(self) -> list[bool]:
        """Per entry: is it a notation's symbol (a letter, a HamNoSys or SignWriting symbol; a
        token's first part), as opposed to a special, language, notation or secondary part."""
        return [entry.startswith(tuple(f"{name}:" for name in NOTATIONS)) for entry in self.tokens]

    @property
    def languages(self) -> list[str]:
        return [t[len("lang:"):] for t in self.tokens if t.startswith("lang:")]

    def encode(self, sign: SignText) -> list[tuple[int, ...]]:
        """A sign -> per token, the ids of its parts (one id per token without parts). A token
        the vocabulary lacks (an unseen letter) is `<unk>`; a secondary part it lacks is left out."""
        index, unknown = self._index, self._index[UNK]
        if not self.parts:
            return [(index.get(token, unknown),) for token in tokenize(sign)]
        return [(index.get(token[0], unknown), *(index[part] for part in token[1:] if part in index))
                for token in token_parts(sign)]
