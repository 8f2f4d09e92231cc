"""Languages the code tasks understand, and how their blocks are delimited."""

from __future__ import annotations

from enum import Enum
from pathlib import PurePosixPath


class BlockStyle(str, Enum):
    INDENT = "indent"  # blocks by indentation (Python)
    BRACES = "braces"  # blocks by { } (C family, Go, Rust, JS/TS, Java, ...)


LANGUAGES: dict[str, BlockStyle] = {
    "python": BlockStyle.INDENT,
    "javascript": BlockStyle.BRACES,
    "typescript": BlockStyle.BRACES,
    "java": BlockStyle.BRACES,
    "go": BlockStyle.BRACES,
    "c": BlockStyle.BRACES,
    "cpp": BlockStyle.BRACES,
    "csharp": BlockStyle.BRACES,
    "rust": BlockStyle.BRACES,
    "kotlin": BlockStyle.BRACES,
    "swift": BlockStyle.BRACES,
    "php": BlockStyle.BRACES,
    "scala": BlockStyle.BRACES,
}

ALIASES = {
    "py": "python",
    "python3": "python",
    "js": "javascript",
    "javascriptreact": "javascript",
    "jsx": "javascript",
    "ts": "typescript",
    "typescriptreact": "typescript",
    "tsx": "typescript",
    "golang": "go",
    "c++": "cpp",
    "cc": "cpp",
    "cs": "csharp",
    "c#": "csharp",
    "rs": "rust",
    "kt": "kotlin",
}

EXTENSIONS = {
    ".py": "python",
    ".pyi": "python",
    ".js": "javascript",
    ".mjs": "javascript",
    ".cjs": "javascript",
    ".jsx": "javascript",
    ".ts": "typescript",
    ".tsx": "typescript",
    ".java": "java",
    ".go": "go",
    ".c": "c",
    ".h": "c",
    ".cc": "cpp",
    ".cpp": "cpp",
    ".cxx": "cpp",
    ".hpp": "cpp",
    ".cs": "csharp",
    ".rs": "rust",
    ".kt": "kotlin",
    ".swift": "swift",
    ".php": "php",
    ".scala": "scala",
}

LINE_COMMENT = {BlockStyle.INDENT: "#", BlockStyle.BRACES: "//"}


class UnsupportedLanguage(ValueError):
    pass


def resolve_language(language: str | None, path: str | None) -> str:
    """The canonical language name from an explicit id or the file's extension."""
    if language:
        key = language.strip().lower()
        key = ALIASES.get(key, key)
        if key in LANGUAGES:
            return key
        raise UnsupportedLanguage(
            f"language {language!r} is not supported; supported: {', '.join(sorted(LANGUAGES))}"
        )
    if path:
        suffix = PurePosixPath(path.replace("\\", "/")).suffix.lower()
        if suffix in EXTENSIONS:
            return EXTENSIONS[suffix]
        raise UnsupportedLanguage(
            f"cannot tell the language of {path!r}; pass `language` (one of {', '.join(sorted(LANGUAGES))})"
        )
    raise UnsupportedLanguage("give `language` or a `path` with a known extension")


def block_style(language: str) -> BlockStyle:
    return LANGUAGES[language]
