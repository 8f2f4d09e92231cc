"""Post-processing of code completions on real-code cases, and streaming parity."""

from __future__ import annotations

import pytest

from serving.tasks.completion import _WhitespaceHealer
from serving.tasks.postprocess import (
    InsertionPoint,
    StreamingPostProcessor,
    choose_mode,
    postprocess,
)

# (name, language, prefix, suffix, generated, mode, expected)
CASES: list[tuple[str, str, str, str, str, str, str]] = [
    # ---------------------------------------------------------------- Python
    (
        "py: body of a function, stop at the next def",
        "python",
        "def area(r):\n    ",
        "",
        "import math\n    return math.pi * r ** 2\n\n\ndef volume(r):\n    return 4 / 3\n",
        "auto",
        "import math\n    return math.pi * r ** 2",
    ),
    (
        "py: cursor ends a header, block is its body",
        "python",
        "class Stack:\n    def push(self, item):",
        "",
        "\n        self.items.append(item)\n\n    def pop(self):\n        return self.items.pop()\n",
        "block",
        "\n        self.items.append(item)",
    ),
    (
        "py: nested blocks stay, dedent ends",
        "python",
        "def fizz(n):\n    for i in range(n):\n        ",
        "\n    return None\n",
        "if i % 15 == 0:\n            print('FizzBuzz')\n        elif i % 3 == 0:\n            print('Fizz')\n    return None\n",
        "auto",
        "if i % 15 == 0:\n            print('FizzBuzz')\n        elif i % 3 == 0:\n            print('Fizz')",
    ),
    (
        "py: continuation lines inside brackets do not end the block",
        "python",
        "def total(xs):\n    ",
        "",
        "return sum(\n    x for x in xs\n)\n\nprint(total([1]))\n",
        "block",
        "return sum(\n    x for x in xs\n)",
    ),
    (
        "py: line mode finishes the line only",
        "python",
        "result = compute(",
        ")\nprint(result)\n",
        "a, b)\nprint(result)\n",
        "auto",
        "a, b",
    ),
    (
        "py: tail repeating the suffix is removed",
        "python",
        "def add(a, b):\n    ",
        "\n    return total\n",
        "total = a + b\n    return total",
        "block",
        "total = a + b",
    ),
    (
        "py: a generated line equal to the suffix's first line ends it",
        "python",
        "def add(a, b):\n    total = a + b\n",
        "    return total\n\n\nprint(add(1, 2))\n",
        "    total += 0\n    return total\n\n\nprint(add(1, 2))\n",
        "block",
        "    total += 0",
    ),
    (
        "py: completion that only echoes the suffix is empty",
        "python",
        "def name(self):\n",
        "    return self._name\n",
        "    return self._name\n",
        "block",
        "",
    ),
    (
        "py: closing bracket already in the suffix",
        "python",
        "values = sorted(items, key=",
        ")\n",
        "lambda item: item.price)",
        "auto",
        "lambda item: item.price",
    ),
    (
        "py: brackets opened by the completion are kept",
        "python",
        "print(",
        ")\n",
        "len(xs))",
        "line",
        "len(xs)",
    ),
    (
        "py: strings and comments do not count as brackets",
        "python",
        "def greet(name):\n    ",
        "",
        "# say hi (politely\n    return f'Hello, {name}!'  # )\n\nclass X:\n    pass\n",
        "block",
        "# say hi (politely\n    return f'Hello, {name}!'  # )",
    ),
    (
        "py: whitespace-only output is dropped",
        "python",
        "x = 1\n",
        "",
        "\n\n   \n",
        "block",
        "",
    ),
    (
        "py: stop token ends everything",
        "python",
        "def f():\n    ",
        "",
        "return 1<|endoftext|>def g(): pass",
        "block",
        "return 1",
    ),
    # ---------------------------------------------------------------- JavaScript / TypeScript
    (
        "js: body statements, closing brace belongs to the suffix",
        "javascript",
        "function add(a, b) {\n  ",
        "\n}\n",
        "const sum = a + b;\n  return sum;\n}\n\nfunction sub(a, b) {\n",
        "auto",
        "const sum = a + b;\n  return sum;",
    ),
    (
        "js: a block opened by the completion ends with its brace",
        "javascript",
        "for (const item of items) ",
        "\nconsole.log('done');\n",
        "{\n  total += item.price;\n}\nconsole.log(total);\n",
        "block",
        "{\n  total += item.price;\n}",
    ),
    (
        "js: braces inside strings and template literals are ignored",
        "javascript",
        "function tag(x) {\n  ",
        "\n}\n",
        "const s = `{${x}}`;\n  return '}' + s;\n}\n",
        "block",
        "const s = `{${x}}`;\n  return '}' + s;",
    ),
    (
        "ts: interface body",
        "typescript",
        "interface User {\n  ",
        "\n}\n",
        "id: number;\n  name: string;\n}\n\nexport function load(): User {\n",
        "block",
        "id: number;\n  name: string;",
    ),
    (
        "ts: line mode in an argument list",
        "typescript",
        "const user = await fetchUser(",
        ");\n",
        "id, { cache: true });\nconsole.log(user);\n",
        "auto",
        "id, { cache: true }",
    ),
    (
        "js: comment with a brace does not end the block",
        "javascript",
        "if (ready) {\n  ",
        "\n}\n",
        "// } not yet\n  start();\n}\n",
        "block",
        "// } not yet\n  start();",
    ),
    # ---------------------------------------------------------------- Java
    (
        "java: method body",
        "java",
        "public int max(int a, int b) {\n    ",
        "\n}\n",
        "if (a > b) {\n        return a;\n    }\n    return b;\n}\n\npublic int min(int a, int b) {\n",
        "block",
        "if (a > b) {\n        return a;\n    }\n    return b;",
    ),
    (
        "java: whole method completion from its header",
        "java",
        "    public String name() ",
        "\n}\n",
        "{\n        return this.name;\n    }\n\n    public int age() {\n",
        "block",
        "{\n        return this.name;\n    }",
    ),
    (
        "java: line mode with a call already closed in the suffix",
        "java",
        "System.out.println(",
        ");\n",
        '"total: " + total);\n',
        "auto",
        '"total: " + total',
    ),
    # ---------------------------------------------------------------- Go
    (
        "go: loop block",
        "go",
        "func sum(xs []int) int {\n\ttotal := 0\n\tfor _, x := range xs ",
        "\n\treturn total\n}\n",
        "{\n\t\ttotal += x\n\t}\n\treturn total\n}\n",
        "block",
        "{\n\t\ttotal += x\n\t}",
    ),
    (
        "go: function body ends before the closing brace in the suffix",
        "go",
        "func (s *Server) Close() error {\n\t",
        "\n}\n",
        "s.mu.Lock()\n\tdefer s.mu.Unlock()\n\treturn s.ln.Close()\n}\n\nfunc main() {\n",
        "block",
        "s.mu.Lock()\n\tdefer s.mu.Unlock()\n\treturn s.ln.Close()",
    ),
    (
        "go: raw string with braces",
        "go",
        "func tmpl() string {\n\t",
        "\n}\n",
        "return `{{.Name}}`\n}\n",
        "block",
        "return `{{.Name}}`",
    ),
    (
        "go: line mode if condition",
        "go",
        "if err != nil ",
        "\n",
        "{\n\treturn err\n}\n",
        "line",
        "{",
    ),
]


@pytest.mark.parametrize(
    ("name", "language", "prefix", "suffix", "generated", "mode", "expected"),
    CASES,
    ids=[case[0] for case in CASES],
)
def test_postprocess_cases(
    name: str, language: str, prefix: str, suffix: str, generated: str, mode: str, expected: str
) -> None:
    point = InsertionPoint(
        prefix=prefix,
        suffix=suffix,
        language=language,
        mode=choose_mode(mode, prefix, suffix),
        stop=("<|endoftext|>",),
    )
    assert postprocess(generated, point).text == expected


@pytest.mark.parametrize("case", CASES, ids=[case[0] for case in CASES])
@pytest.mark.parametrize("chunk", [1, 3, 7])
def test_streaming_equals_whole(case: tuple[str, ...], chunk: int) -> None:
    """Streamed in any chunk size, the emitted text is the non-streaming answer
    and nothing emitted is ever taken back."""
    _, language, prefix, suffix, generated, mode, expected = case
    point = InsertionPoint(
        prefix=prefix,
        suffix=suffix,
        language=language,
        mode=choose_mode(mode, prefix, suffix),
        stop=("<|endoftext|>",),
    )
    processor = StreamingPostProcessor(point)
    emitted = ""
    for start in range(0, len(generated), chunk):
        emitted += processor.feed(generated[start : start + chunk])
        assert expected.startswith(emitted), "emitted text that the final answer does not have"
    emitted += processor.finish()
    assert emitted == expected


def test_mode_choice() -> None:
    assert choose_mode("auto", "x = f(", ")\n") == "line"  # text after the cursor on its line
    assert choose_mode("auto", "def f():\n    ", "\n") == "block"
    assert choose_mode("line", "a", "") == "line"


@pytest.mark.parametrize(
    ("healed", "generated", "expected"),
    [
        ("\n    ", "\n    if n:\n        return 1", "if n:\n        return 1"),
        ("\n", "\n    return 1", "    return 1"),  # column 0: the model's indentation stays
        ("\n\n", "\n\ny = 2", "y = 2"),
        ("\n  ", "\n    return a + b;", "return a + b;"),  # the user's indentation wins
        ("", "  x", "  x"),
    ],
)
def test_whitespace_healing(healed: str, generated: str, expected: str) -> None:
    healer = _WhitespaceHealer(healed)
    out = "".join(healer.feed(ch) for ch in generated) + healer.feed("", final=True)
    assert out == expected
