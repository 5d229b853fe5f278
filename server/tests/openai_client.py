"""Drives a cogvlm server with the official `openai` Python client; prints one JSON object.

Usage: python3 openai_client.py < spec.json, where spec = {"base_url", "model", "image",
"turns": [[question, answer], ...], "query", "max_tokens", "stop"}. The image (a file path) goes
with the first question as a data URL. Called by server/tests/openai.rs, which asserts on the output.
"""
import base64
import json
import sys

try:
    import openai
except ImportError:
    print(json.dumps({"missing": "openai"}))
    sys.exit(3)

spec = json.load(sys.stdin)
client = openai.OpenAI(base_url=spec["base_url"], api_key="unused", max_retries=0, timeout=300)

with open(spec["image"], "rb") as f:
    image_url = "data:image/png;base64," + base64.b64encode(f.read()).decode()


def messages(image=image_url):
    turns = spec["turns"] + [[spec["query"], None]]
    out = []
    for i, (q, a) in enumerate(turns):
        if i == 0:
            content = [{"type": "text", "text": q}, {"type": "image_url", "image_url": {"url": image}}]
        else:
            content = q
        out.append({"role": "user", "content": content})
        if a is not None:
            out.append({"role": "assistant", "content": a})
    return out


def usage(u):
    return None if u is None else {
        "prompt_tokens": u.prompt_tokens, "completion_tokens": u.completion_tokens,
        "total_tokens": u.total_tokens}


def error(call):
    try:
        call()
    except openai.APIStatusError as e:
        body = e.body if isinstance(e.body, dict) else {}
        # The client unwraps {"error": {...}} into body.
        return {"status": e.status_code, "type": body.get("type"), "param": body.get("param"),
                "message": body.get("message")}
    return None


common = dict(model=spec["model"], temperature=0, max_tokens=spec["max_tokens"])
result = {"models": [m.id for m in client.models.list().data]}

r = client.chat.completions.create(messages=messages(), **common)
result["plain"] = {"object": r.object, "text": r.choices[0].message.content,
                   "role": r.choices[0].message.role,
                   "finish_reason": r.choices[0].finish_reason, "usage": usage(r.usage)}

chunks = []
for c in client.chat.completions.create(messages=messages(), stream=True,
                                        stream_options={"include_usage": True}, **common):
    choice = c.choices[0] if c.choices else None
    chunks.append({"object": c.object,
                   "role": choice and choice.delta.role,
                   "content": choice and choice.delta.content,
                   "finish_reason": choice and choice.finish_reason,
                   "usage": usage(c.usage)})
result["chunks"] = chunks

if spec.get("stop"):
    r = client.chat.completions.create(messages=messages(), stop=[spec["stop"]], **common)
    result["stopped"] = {"text": r.choices[0].message.content,
                         "finish_reason": r.choices[0].finish_reason, "usage": usage(r.usage)}

result["errors"] = {
    "remote_url": error(lambda: client.chat.completions.create(
        messages=messages("https://example.com/cat.png"), **common)),
    "unknown_model": error(lambda: client.chat.completions.create(
        messages=messages(), **{**common, "model": "no-such-model"})),
    "no_user_last": error(lambda: client.chat.completions.create(
        messages=[{"role": "assistant", "content": "hi"}], **common)),
}
print(json.dumps(result))
