"""Chat templates: a conversation rendered to text by a Jinja template, exactly as Transformers renders it.

A fine-tuned decoder's workdir keeps its template as `chat_template.jinja`; export writes it
into `tokenizer_config.json` as `chat_template`, so `tokenizer.apply_chat_template` in
Transformers renders the same text and, through the exported tokenizer, the same ids.
Rendering follows transformers/utils/chat_template_utils.py: a sandboxed Jinja environment
with trim_blocks and lstrip_blocks, the loopcontrols extension, `raise_exception`,
`strftime_now` and a JSON `tojson`, `{% generation %}` blocks rendered as their body, and
the tokenizer's special tokens (bos_token, eos_token, pad_token, unk_token) as variables.

meshlm's default template keeps its decoders' document convention: a conversation starts
with bos_token ([CLS], the document start) and every assistant turn ends with eos_token
([SEP], where decoding stops):

    [CLS]User: reverse: one two three
    Assistant: three two one[SEP]

Templates are text a user supplies; rendering errors become one-line DataErrors.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import pathlib

import jinja2
import jinja2.ext
from jinja2.sandbox import ImmutableSandboxedEnvironment

from data.documents import DataError

TEMPLATE_FILE = "chat_template.jinja"  # in a workdir, as Transformers also saves it
ROLES = ("system", "user", "assistant")
_WORD_START = "\u2581"  # sentencepiece's "▁"

DEFAULT_TEMPLATE = (
    "{{- bos_token }}\n"
    "{%- for message in messages %}\n"
    "    {%- if message['role'] == 'system' %}\n"
    "        {{- message['content'] + '\\n' }}\n"
    "    {%- elif message['role'] == 'user' %}\n"
    "        {{- 'User: ' + message['content'] + '\\n' }}\n"
    "    {%- elif message['role'] == 'assistant' %}\n"
    "        {{- 'Assistant: ' + message['content'] + eos_token }}\n"
    "    {%- else %}\n"
    "        {{- raise_exception('a message role must be system, user or assistant, not ' + message['role']) }}\n"
    "    {%- endif %}\n"
    "{%- endfor %}\n"
    "{%- if add_generation_prompt %}\n"
    "    {{- 'Assistant:' }}\n"
    "{%- endif %}\n"
)


class _Generation(jinja2.ext.Extension):
    """`{% generation %}...{% endgeneration %}` (Transformers' assistant-mask marker) renders its body."""

    tags = {"generation"}

    def parse(self, parser: jinja2.parser.Parser) -> jinja2.nodes.Node:
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return jinja2.nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

    def _body(self, caller) -> str:
        return caller()


def _raise_exception(message: str) -> None:
    raise jinja2.exceptions.TemplateError(message)


def _tojson(value, ensure_ascii=False, indent=None, separators=None, sort_keys=False) -> str:
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


class ChatTemplate:
    """A compiled chat template and the special tokens it is rendered with."""

    def __init__(self, text: str, special_tokens: dict[str, str], name: str = "the chat template"):
        self.text, self.name, self.special_tokens = text, name, dict(special_tokens)
        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                            extensions=[_Generation, jinja2.ext.loopcontrols])
        env.filters["tojson"] = _tojson
        env.globals.update(raise_exception=_raise_exception,
                           strftime_now=lambda fmt: datetime.datetime.now().strftime(fmt))
        try:
            self._template = env.from_string(text)
        except jinja2.TemplateSyntaxError as e:
            raise DataError(f"{name} is not a valid Jinja template (line {e.lineno}: {e.message})") from None

    def render(self, messages: list[dict[str, str]], *, add_generation_prompt: bool = False,
               where: str = "a conversation") -> str:
        """The text of a conversation (plus the assistant's opening when add_generation_prompt)."""
        try:
            return self._template.render(messages=messages, add_generation_prompt=add_generation_prompt,
                                         tools=None, documents=None, **self.special_tokens)
        except Exception as e:  # a user's template may raise anything; the user needs one line
            first = (str(e).strip().splitlines() or [""])[0]
            raise DataError(f"{self.name} does not render {where}: {type(e).__name__}: {first}") from None

    def sha256(self) -> str:
        return hashlib.sha256(self.text.encode()).hexdigest()


def special_tokens(tokenizer) -> dict[str, str]:
    """The template variables Transformers passes: the tokenizer's special tokens by role.

    bos/eos are meshlm's document start and end ([CLS], [SEP]), as the export names them.
    """
    roles = {"bos_token": tokenizer.cls_id, "eos_token": tokenizer.sep_id, "pad_token": tokenizer.pad_id,
             "unk_token": getattr(tokenizer, "unk_id", None)}
    return {role: tokenizer.id_to_piece(i) for role, i in roles.items() if i is not None}


def encode_text(tokenizer, text: str) -> list[int]:
    """The ids of rendered text: the tokenizer's encoding, a special token spelled in it as its id alone.

    sentencepiece puts a lone '▁' before a user-defined symbol at the start of a text;
    training rows never hold one, and the exported tokenizer.json encodes without it.
    """
    ids = tokenizer.encode(text)
    special = {tokenizer.cls_id, tokenizer.sep_id}
    return [i for k, i in enumerate(ids)
            if not (k + 1 < len(ids) and ids[k + 1] in special and tokenizer.id_to_piece(i) == _WORD_START)]


def load_template(path: str | pathlib.Path) -> str:
    """The text of a template file; a DataError when it cannot be read."""
    path = pathlib.Path(path).expanduser()
    if not path.is_file():
        raise DataError(f"chat template {path} is not a file; give a Jinja template file "
                        "(data.chat_template=PATH), or leave data.chat_template empty for the workdir's or the default")
    return path.read_text(encoding="utf-8")


def workdir_template(workdir: str | pathlib.Path) -> str | None:
    """A workdir's chat template text, or None when it has none."""
    path = pathlib.Path(workdir) / TEMPLATE_FILE
    return path.read_text(encoding="utf-8") if path.is_file() else None


def write_template(workdir: str | pathlib.Path, text: str) -> None:
    """Keeps `text` as the workdir's chat template."""
    (pathlib.Path(workdir) / TEMPLATE_FILE).write_text(text, encoding="utf-8")


def hf_folder_template(hf_dir: str | pathlib.Path) -> str | None:
    """The chat template of a Transformers folder (chat_template.jinja, else tokenizer_config.json's)."""
    hf_dir = pathlib.Path(hf_dir)
    if (hf_dir / TEMPLATE_FILE).is_file():
        return (hf_dir / TEMPLATE_FILE).read_text(encoding="utf-8")
    config = hf_dir / "tokenizer_config.json"
    template = json.loads(config.read_text(encoding="utf-8")).get("chat_template") if config.is_file() else None
    if isinstance(template, list):  # several named templates: the default one
        template = next((t.get("template") for t in template if t.get("name") == "default"), None)
    return template if isinstance(template, str) else None
