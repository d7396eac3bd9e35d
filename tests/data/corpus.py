"""Strings that tokenizers get wrong: spacing, scripts, emoji, code, control-token look-alikes.

`CORPUS` is the base strings plus each of a sample of them with the spacing around it
changed, since leading and trailing spaces are where SentencePiece and BPE differ most.
"""

BASE = [
    # empty and whitespace only
    "", " ", "  ", "   ", "\t", "\n", "\n\n", "\r\n", " \n ", "\t \t", "\u00a0", "\u3000",
    # plain prose
    "Hello", "hello", "Hello world", "Hello, world!", "The quick brown fox jumps over the lazy dog.",
    "What is the capital of France?", "Paris is the capital of France.",
    "I'm sure you'll like it; they've said we'd go.", "DON'T SHOUT", "e.g. i.e. etc.",
    "a", "A", "I", "ab", "x y z", "one,two,three", "end.", "...", "?!?!", "--", "—em dash—",
    "\"quoted\" and 'single'", "«guillemets»", "(parentheses) [brackets] {braces}",
    "50% off: $19.99 (was €25,00)", "3.14159265358979", "1234567890", "2024-01-15T12:30:00Z",
    "+1 (555) 123-4567", "user@example.com", "https://example.com/path?q=1&r=2#frag",
    # spacing and line structure
    "double  space", "triple   space", "trailing space ", "trailing spaces   ", " leading",
    "   leading three", "\tleading tab", "trailing tab\t", "mid\ttab", "line one\nline two",
    "para one\n\npara two", "windows\r\nline", "no newline at end\n", "\n\nstarts with newlines",
    "   \n   indented block\n      more", "a \n b", "tabs\t\t\tmany", "space before newline \n",
    # code
    "def f(x):\n    return x * 2\n", "for i in range(10):\n\tprint(i)",
    "int main(void) { return 0; }", "if (a && b || !c) { x++; }", "x = [1, 2, 3]  # list",
    "const f = (a) => a ** 2;", "SELECT * FROM t WHERE id = 42;", "<div class=\"x\">hi</div>",
    "{\"key\": [1, 2, {\"nested\": null}]}", "#include <stdio.h>", "    return self._cache[key]",
    "fn main() -> Result<(), Box<dyn Error>> {}", "$ ls -la | grep '^d'", "a_b_c snake_case camelCase",
    "__init__", "0x1F 0b1010 1e-9", "// comment\n/* block */", "`backticks` and ~tilde~",
    # other scripts
    "日本語のテキスト", "こんにちは世界", "中文分词测试", "한국어 문장입니다", "Привет, мир!",
    "Ελληνικά γράμματα", "שלום עולם", "مرحبا بالعالم", "नमस्ते दुनिया", "ภาษาไทย", "Tiếng Việt có dấu",
    "Ünïcödé ßtraße", "Zürich Łódź İstanbul", "mixed English and 日本語 text", "全角ＡＢＣ１２３",
    # emoji and symbols
    "🎉", "emoji 🎉 party", "👩‍👩‍👧 family", "👍🏽 skin tone", "🇫🇷 flag", "❤️ heart", "😀😃😄😁",
    "∑ ∫ √ ∞ ≠ ≤", "→ ← ↑ ↓", "© ® ™", "♠♣♥♦", "𝔘𝔫𝔦𝔠𝔬𝔡𝔢", "\U0001F600 in text",
    # combining marks and normalization traps
    "e\u0301", "cafe\u0301", "café", "n\u0303", "a\u0308\u0304", "Å vs A\u030a", "ﬁ ligature",
    "\u200b zero width", "soft\u00adhyphen", "x\u0338", "\ufeffBOM", "\u202eRTL override",
    # control-token look-alikes (must stay plain text)
    "<s>", "</s>", "<unk>", "[INST]", "[/INST]", "[INST] hi [/INST]", "<s>[INST] hi [/INST]</s>",
    "<|im_start|>", "<|im_end|>", "<|im_start|>user\nhi<|im_end|>", "<|endoftext|>",
    "<|eot_id|>", "<0x0A>", "<0xFF>", "▁", "▁hello", "Ġhello", "<<SYS>>", "<|begin_of_text|>",
]

_RESPACED = [" {}", "{} ", "  {}  ", "\t{}", "{}\n", "\n{}\n"]


def _respaced() -> list[str]:
    sample = [s for s in BASE if s.strip()][::3]
    return [form.format(s) for s in sample for form in _RESPACED[:3]]


CORPUS = BASE + _respaced()
