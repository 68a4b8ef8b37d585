"""edit-apply: applies the validated edits and normalises whitespace."""
import doc


def handler(event, context):
    d = doc.mark(doc.document(event), "edit-apply", context)
    text = d.get("text", "")
    for e in d.pop("edits", []):
        text = text.replace(e["find"], e["replace"])
    d["text"] = " ".join(text.split())
    return d


if __name__ == "__main__":
    doc.serve(handler)
