"""Tokenizers: CLIP's byte-level BPE against transformers' ``CLIPTokenizer`` on the real CLIP
vocabulary, the 77-id rows SD v1 reads, word positions for Prompt-to-Prompt, the toy model's word
tokenizer, and bad input.

The real vocabulary is OpenAI's ``bpe_simple_vocab_16e6.txt.gz``, which the PyPI package
``openai-clip`` ships inside its ``clip`` package. It is found, without importing that package
(which imports torchvision), by ``importlib.util.find_spec``; ``CLIP_BPE_VOCAB=/path/to/file.gz``
overrides. Without it the parity tests fail (they never skip).

Where transformers' ``CLIPTokenizer`` (transformers 5: the ``tokenizers``-backed one, no ftfy)
differs from CLIP's own clean-up, which we follow, the prompts are adapted or left out, explicitly:
- html entities: CLIP unescapes them ("&amp;" -> "&"), transformers does not; for that category
  transformers is given the text after ``html.unescape`` twice.
- Greek capital sigma at a word's end: Python's ``str.lower`` (CLIP's) makes it final "ς",
  ``tokenizers``' Lowercase makes it "σ"; the generated Greek is lowercase.
- The ASCII separators \\x1c-\\x1f: whitespace to Python's ``re`` (CLIP's), not to ``tokenizers``';
  they are not generated (both are measured in test_documented_differences_from_transformers).
- Special-token strings typed in upper case ("<|ENDOFTEXT|>"): CLIP lowercases, then reads the
  special token; transformers matches specials before lowercasing. Only lowercase ones are generated.
ftfy's repairs (curly quotes, ligatures, full-width forms, mojibake) are done by neither, so those
prompts are compared as they are; OpenAI's CLIP, which runs ftfy, would give other ids for them.
"""
from __future__ import annotations

import html
import importlib.util
import json
import os
import random
import warnings
from pathlib import Path

import pytest
import torch
import transformers
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers.convert_slow_tokenizer import bytes_to_unicode as hf_bytes_to_unicode

from ldm.clip_tokenizer import CLIPTokenizer, bytes_to_unicode, clean
from ldm.tokenizer import WordTokenizer

BPE_FILE = "bpe_simple_vocab_16e6.txt.gz"


def clip_bpe_path() -> Path:
    """OpenAI's merges file: $CLIP_BPE_VOCAB, else inside an installed ``clip`` (openai-clip) or
    ``open_clip`` package, located with find_spec, which does not import the package."""
    if os.environ.get("CLIP_BPE_VOCAB"):
        return Path(os.environ["CLIP_BPE_VOCAB"])
    for package in ("clip", "open_clip"):
        spec = importlib.util.find_spec(package)
        for folder in (spec.submodule_search_locations or []) if spec else []:
            if (Path(folder) / BPE_FILE).is_file():
                return Path(folder) / BPE_FILE
    pytest.fail(f"CLIP's {BPE_FILE} was not found: install the test extra (openai-clip==1.0.1) "
                f"or set CLIP_BPE_VOCAB to the file's path")


@pytest.fixture(scope="module")
def ours() -> CLIPTokenizer:
    return CLIPTokenizer.from_bpe_file(clip_bpe_path())


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> transformers.CLIPTokenizer:
    """transformers' tokenizer over vocab.json + merges.txt built here from the merges file, with
    transformers' own byte table, independently of ldm.clip_tokenizer.clip_vocab."""
    import gzip
    lines = gzip.open(clip_bpe_path(), "rt", encoding="utf-8").read().split("\n")
    merges = lines[1 : 49152 - 256 - 2 + 1]
    chars = list(hf_bytes_to_unicode().values())
    tokens = chars + [c + "</w>" for c in chars] + ["".join(m.split()) for m in merges]
    vocab = {t: i for i, t in enumerate(tokens + ["<|startoftext|>", "<|endoftext|>"])}
    folder = tmp_path_factory.mktemp("clip_reference")
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    return transformers.CLIPTokenizer.from_pretrained(str(folder))


# ---- the prompts --------------------------------------------------------------------------------
WORDS = ("a photo of the cat dog astronaut riding horse on mars watercolor painting oil portrait "
         "beautiful landscape mountains lake sunset city night street cyberpunk neon lights castle "
         "forest dragon red blue green golden big small old young woman man child robot tree house "
         "highly detailed sharp focus trending artstation octane render unreal engine 4k 8k hdr "
         "bokeh cinematic lighting studio ghibli van gogh monet style impressionism surreal "
         "photorealistic macro shot of an insect with wings flying over flowers in spring").split()
PUNCT = [",", ".", "!", "?", ";", ":", "...", "-", "(", ")", "[", "]", "\"", "'", "!!", "?!", "--", "/", "&", "#"]
CONTRACTIONS = ["it's", "don't", "we'll", "they're", "i'm", "you've", "he'd", "cat's", "DOG'S", "can't"]
UNICODE = ["café", "naïve", "Zürich", "São Paulo", "Ångström", "façade", "Straße", "ÉCOLE", "piñata",
           "e\u0301te\u0301", "n\u0303", "🐱", "🎨", "❤️", "👍🏽", "🇫🇷", "👨‍👩‍👧", "🔥🔥🔥", "猫", "東京タワー",
           "한국어", "ひらがな", "中文字符", "οδος", "κόσμε", "привет", "Москва", "مرحبا", "שלום", "हिन्दी",
           "ไทย", "“quoted”", "‘single’", "ﬁne", "Ａｂｃ", "cafÃ©", "—", "½", "²", "①", "…"]
SPACES = ["  ", "   ", "\t", "\n", " \n ", "\xa0", "\u3000", "\r\n"]
ENTITIES = ["&amp;", "&lt;", "&gt;", "&quot;", "&#39;", "&nbsp;", "&amp;amp;", "&eacute;", "&#x1F431;", "&copy;"]


def make_prompts(seed: int = 0) -> dict[str, list[str]]:
    """Deterministic prompts by category (1,400 in all)."""
    rng = random.Random(seed)

    def words(n: int) -> list[str]:
        return [rng.choice(WORDS) for _ in range(n)]

    def case(w: str) -> str:
        return rng.choice([w, w, w.upper(), w.capitalize()])

    cats: dict[str, list[str]] = {"words": [], "punctuation": [], "numbers": [], "unicode": [],
                                  "long": [], "spaces": [], "html": [], "specials": []}
    for _ in range(300):
        cats["words"].append(" ".join(case(w) for w in words(rng.randint(1, 20))))
    for _ in range(200):
        ws = words(rng.randint(2, 12)) + rng.sample(CONTRACTIONS, 2)
        rng.shuffle(ws)
        cats["punctuation"].append(" ".join(w + (rng.choice(PUNCT) if rng.random() < 0.4 else "") for w in ws))
    for _ in range(150):
        nums = [str(rng.randint(0, 10 ** rng.randint(1, 8))), f"{rng.random() * 100:.2f}", f"{rng.randint(1800, 2030)}s",
                f"{rng.randint(1, 100)}%", f"x{rng.randint(2, 64)}", f"{rng.randint(1, 9)}k"]
        cats["numbers"].append(" ".join(words(rng.randint(1, 6)) + rng.sample(nums, 3)))
    for _ in range(300):
        ws = words(rng.randint(0, 8)) + [rng.choice(UNICODE) for _ in range(rng.randint(1, 4))]
        rng.shuffle(ws)
        glue = rng.choice([" ", " ", ""])
        cats["unicode"].append(glue.join(ws))
    for _ in range(150):
        n = rng.randint(60, 140)
        cats["long"].append(", ".join(" ".join(words(rng.randint(1, 4))) for _ in range(n // 3)))
    for _ in range(150):
        ws = words(rng.randint(1, 10))
        cats["spaces"].append(rng.choice(["", " ", "  "]) + "".join(w + rng.choice(SPACES + [" "]) for w in ws))
    for _ in range(100):
        ws = words(rng.randint(1, 8)) + [rng.choice(ENTITIES) for _ in range(rng.randint(1, 3))]
        rng.shuffle(ws)
        cats["html"].append(" ".join(ws))
    for _ in range(50):
        ws = words(rng.randint(1, 6)) + [rng.choice(["<|endoftext|>", "<|startoftext|>", "<|endoftext|>x"])]
        rng.shuffle(ws)
        cats["specials"].append(" ".join(ws))
    return cats


PROMPTS = make_prompts()


def reference_text(category: str, prompt: str) -> str:
    """What to give transformers so that it sees what CLIP's clean-up sees (see the module docstring)."""
    return html.unescape(html.unescape(prompt)) if category == "html" else prompt


# ---- parity with transformers ------------------------------------------------------------------
def test_vocabulary_matches_an_independent_construction(ours, reference):
    """Our vocabulary from the merges file is the one built in the fixture with transformers' byte
    table; and the ids of a well-known prompt are those of openai/clip-vit-large-patch14's tokenizer
    ("a photo of a cat" -> 320 1125 539 320 2368, published in countless CLIP examples)."""
    assert ours.vocab == reference.get_vocab()
    assert ours.vocab_size == 49408 and (ours.bos_id, ours.eos_id, ours.pad_id) == (49406, 49407, 49407)
    assert bytes_to_unicode() == hf_bytes_to_unicode()
    assert ours.encode("a photo of a cat") == [320, 1125, 539, 320, 2368]


@pytest.mark.parametrize("category", sorted(PROMPTS))
def test_encode_matches_transformers(ours, reference, category):
    prompts = PROMPTS[category]
    assert len(prompts) >= 50
    for prompt in prompts:
        expected = reference(reference_text(category, prompt), add_special_tokens=False).input_ids
        assert ours.encode(prompt) == expected, f"{category}: {prompt!r}"


@pytest.mark.parametrize("category", sorted(PROMPTS))
def test_rows_match_transformers(ours, reference, category):
    """The (B, 77) rows SD v1 reads: diffusers' call, padding="max_length", truncation=True."""
    prompts = PROMPTS[category]
    expected = reference([reference_text(category, p) for p in prompts], padding="max_length", max_length=77,
                         truncation=True, return_tensors="pt").input_ids
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # truncation warnings are tested on their own below
        ids = ours(prompts)
    assert ids.dtype == torch.long and ids.shape == (len(prompts), 77)
    torch.testing.assert_close(ids, expected, rtol=0, atol=0)


def test_prompt_set_covers_what_it_claims(ours):
    assert sum(len(v) for v in PROMPTS.values()) >= 1000
    assert sum(len(ours.encode(p)) > 75 for p in PROMPTS["long"]) >= 100  # most long prompts get truncated
    assert any("  " in p for p in PROMPTS["spaces"]) and any("\t" in p for p in PROMPTS["spaces"])
    assert any(ord(c) > 0x3000 for p in PROMPTS["unicode"] for c in p)  # CJK and emoji are there
    assert make_prompts() == PROMPTS  # deterministic


def test_documented_differences_from_transformers(ours, reference):
    """The adaptations in the module docstring are real: each input gives other ids in transformers.
    If one stops differing (a new transformers), the adaptation can go."""
    cases = {"&amp;": "html entity", "ΟΔΟΣ": "final sigma", "a\x1cb": "\\x1c separator", "<|ENDOFTEXT|>": "upper special"}
    for text, what in cases.items():
        assert ours.encode(text) != reference(text, add_special_tokens=False).input_ids, what
    assert ours.encode("&amp;") == ours.encode("&") and ours.encode("<|ENDOFTEXT|>") == [ours.eos_id]
    assert clean("ΟΔΟΣ") == "οδος" and clean("a\x1cb") == "a b"


@settings(max_examples=300, deadline=None)  # a module-scoped fixture is safe to share between examples
@given(text=st.text(max_size=400))
def test_any_text_encodes_to_at_most_77_ids(ours, text):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ids = ours([text])
    assert ids.shape == (1, 77) and int(ids.min()) >= 0 and int(ids.max()) < ours.vocab_size
    assert ids[0, 0] == ours.bos_id and (ids[0] == ours.eos_id).any()  # the text encoder needs an eos in every row
    # word_token_indices tokenizes word by word; that must be the whole prompt's tokens
    assert sum((ours.encode(w) for w in text.split(" ")), []) == ours.encode(text)


# ---- rows, truncation, decode, files -------------------------------------------------------------
def test_truncation_keeps_75_tokens_and_warns_how_many_were_dropped(ours):
    """Each digit is its own token (the pre-tokenizer's \\p{N} takes one digit), so 100 digits are
    100 tokens: 75 fit, 25 are dropped."""
    prompt = "7" * 100
    with pytest.warns(UserWarning, match=r"prompt '7777.*' has 100 tokens.*the last 25 tokens were dropped"):
        ids = ours([prompt, "a cat"])
    seven = ours.encode("7")[0]
    assert ids[0].tolist() == [ours.bos_id] + [seven] * 75 + [ours.eos_id]
    assert ids[1].tolist() == [ours.bos_id, *ours.encode("a cat"), ours.eos_id] + [ours.eos_id] * 73  # 77 - bos - 2 - eos


def test_empty_prompt_is_bos_then_eos_padding(ours):
    """CFG's unconditional prompt "" is bos followed by 76 eos (SD v1 pads with eos)."""
    assert ours([""])[0].tolist() == [49406] + [49407] * 76


def test_decode_inverts_encode_up_to_clean_up(ours):
    for prompt in PROMPTS["unicode"][:100] + PROMPTS["punctuation"][:100]:
        ids = ours.encode(prompt)
        assert ours.encode(ours.decode(ids)) == ids


def test_save_and_load_round_trip(ours, tmp_path):
    ours.save(tmp_path / "sd" / "tokenizer")
    assert sorted(p.name for p in (tmp_path / "sd" / "tokenizer").iterdir()) == ["merges.txt", "vocab.json"]  # no temp files left
    for path in (tmp_path / "sd", tmp_path / "sd" / "tokenizer"):  # an SD folder, or its tokenizer/ folder
        again = CLIPTokenizer.load(path)
        assert again.vocab == ours.vocab and again.merges == ours.merges
    reloaded = transformers.CLIPTokenizer.from_pretrained(str(tmp_path / "sd" / "tokenizer"))
    prompt = PROMPTS["unicode"][0]
    assert reloaded(prompt, add_special_tokens=False).input_ids == ours.encode(prompt)


# ---- word positions for Prompt-to-Prompt ---------------------------------------------------------
def test_word_token_indices_hand_computed(ours):
    """bos is position 0. "a cat 1234 dog": a -> 1, cat -> 2, 1234 -> four digit tokens 3..6, dog -> 7.
    "cat's" is two tokens ("cat", "'s"); double spaces make empty words with no tokens."""
    prompt = "a cat 1234 dog"
    assert ours.word_token_indices(prompt, 2) == [3, 4, 5, 6]
    assert ours.word_token_indices(prompt, "1234") == [3, 4, 5, 6]
    assert ours.word_token_indices(prompt, "dog") == [7]
    assert ours.word_token_indices("the cat's  hat", "hat") == [4]  # the=1, cat=2, 's=3, ""=(none), hat=4
    assert ours.word_token_indices("a cat and a Cat", "cat") == [2, 5]  # every occurrence, compared lowercased
    assert [ours.decode([i]) for i in ours.encode("zürich")] == ["z", "ü", "rich"]  # BPE splits it in three
    assert ours.word_token_indices("A Zürich view", "Zürich") == [2, 3, 4]
    assert ours.word_token_indices("A Zürich view", 2) == [5]


def test_word_token_indices_agree_with_transformers_tokens(ours, reference):
    """For every word of 200 prompts, transformers' whole-prompt row at our positions holds exactly
    that word's own tokens."""
    for prompt in PROMPTS["words"][:100] + PROMPTS["unicode"][:100]:
        row = reference(prompt, padding="max_length", max_length=77, truncation=True).input_ids
        for i, word in enumerate(prompt.split(" ")):
            if not reference(word, add_special_tokens=False).input_ids:
                continue
            positions = ours.word_token_indices(prompt, i)
            assert [row[p] for p in positions] == reference(word, add_special_tokens=False).input_ids[: len(positions)]


def test_word_token_indices_drop_truncated_positions(ours):
    prompt = " ".join(["cat"] * 80)
    assert ours.word_token_indices(prompt, "cat") == list(range(1, 76))
    with pytest.raises(ValueError, match=r"word 79 of prompt .* has no token .* truncated past position 75"):
        ours.word_token_indices(prompt, 79)


# ---- the toy model's word tokenizer --------------------------------------------------------------
TOY_WORDS = ["a", "big", "small", "red", "blue", "circle", "square", "on", "background"]


def test_word_tokenizer_rows_and_positions(tmp_path):
    tok = WordTokenizer(TOY_WORDS)
    assert (tok.pad_id, tok.bos_id, tok.eos_id, tok.vocab_size) == (9, 10, 11, 12)
    ids = tok(["a big red circle", "A  Blue square on a red background"])
    assert ids.shape == (2, 77)
    assert ids[0].tolist() == [10, 0, 1, 3, 5, 11] + [9] * 71
    assert ids[1, :9].tolist() == [10, 0, 4, 6, 7, 0, 3, 8, 11]
    assert tok.word_token_indices("a big red circle", "red") == [3]
    assert tok.word_token_indices("A  Blue square", 3) == [3]  # words: "A", "", "Blue", "square"
    assert tok.decode(tok.encode("a big red circle")) == "a big red circle"
    tok.save(tmp_path)
    assert WordTokenizer.load(tmp_path).words == TOY_WORDS


def test_word_tokenizer_truncation_warns():
    tok = WordTokenizer(TOY_WORDS)
    with pytest.warns(UserWarning, match="has 80 tokens.*the last 5 tokens were dropped"):
        ids = tok([" ".join(["red"] * 80)])
    assert ids[0].tolist() == [10] + [3] * 75 + [11]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(TOY_WORDS + [w.upper() for w in TOY_WORDS]), max_size=120),
       st.lists(st.sampled_from([" ", "  ", "\t", "\n"]), min_size=121, max_size=121))
def test_word_tokenizer_any_vocabulary_text(words, seps):
    tok = WordTokenizer(TOY_WORDS)
    text = "".join(s + w for s, w in zip(seps, words))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ids = tok([text])
    assert ids.shape == (1, 77) and (ids[0] == tok.eos_id).sum() == 1
    assert ids[0, 1 : 1 + min(len(words), 75)].tolist() == [TOY_WORDS.index(w.lower()) for w in words][:75]


# ---- bad input ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["clip", "word"])
def test_bad_prompts(kind, request):
    tok = request.getfixturevalue("ours") if kind == "clip" else WordTokenizer(TOY_WORDS)
    with pytest.raises(ValueError, match="at least one prompt, got an empty list"):
        tok([])
    with pytest.raises(ValueError, match=r"list of prompts, got the single string 'a red circle'"):
        tok("a red circle")
    with pytest.raises(ValueError, match=r"prompt 1 must be a str, got int: 3"):
        tok(["a red circle", 3])
    with pytest.raises(ValueError, match=r"word 'green' is not among the words \['a', 'red', 'circle'\]"):
        tok.word_token_indices("a red circle", "green")
    with pytest.raises(ValueError, match=r"word index 3 is out of range for the 3 words"):
        tok.word_token_indices("a red circle", 3)
    with pytest.raises(ValueError, match=r"expected a single word, got 'red circle'"):
        tok.word_token_indices("a red circle", "red circle")


def test_word_tokenizer_bad_input(tmp_path):
    tok = WordTokenizer(TOY_WORDS)
    with pytest.raises(ValueError, match=r"unknown word 'green' in prompt 'a green circle'; the vocabulary is \['a', 'big'"):
        tok(["a green circle"])
    with pytest.raises(ValueError, match=r"repeated: \['red'\]"):
        WordTokenizer(["red", "blue", "red"])
    with pytest.raises(ValueError, match=r"'<eos>' is a special token"):
        WordTokenizer(["red", "<eos>"])
    with pytest.raises(ValueError, match=r"'Red' must be a non-empty lowercase str"):
        WordTokenizer(["Red"])
    with pytest.raises(FileNotFoundError, match="no word vocabulary at"):
        WordTokenizer.load(tmp_path)
    (tmp_path / "words.json").write_text('["red"]')
    with pytest.raises(ValueError, match="is not a WordTokenizer vocabulary"):
        WordTokenizer.load(tmp_path)


def test_clip_tokenizer_bad_files(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"no vocab.json in .*expected a CLIP tokenizer folder"):
        CLIPTokenizer.from_folder(tmp_path)
    with pytest.raises(FileNotFoundError, match="no CLIP BPE merges file at"):
        CLIPTokenizer.from_bpe_file(tmp_path / "missing.txt.gz")
    with pytest.raises(ValueError, match="lacks the special tokens"):
        CLIPTokenizer({"a": 0, "b": 1}, [])
    from ldm.clip_tokenizer import END_OF_WORD, bytes_to_unicode

    chars = list(bytes_to_unicode().values())
    tokens = chars + [c + END_OF_WORD for c in chars] + ["<|startoftext|>", "<|endoftext|>"]
    with pytest.raises(ValueError, match="merges make tokens that are not in the vocabulary"):
        CLIPTokenizer({t: i for i, t in enumerate(tokens)}, [("a", "b")])


def test_clip_tokenizer_rejects_text_that_is_not_unicode(ours):
    with pytest.raises(ValueError, match=r"lone surrogate .* at index 2"):
        ours.encode("a \ud800 cat")
    with pytest.raises(ValueError, match="text must be a str, got bytes"):
        ours.encode(b"a cat")
