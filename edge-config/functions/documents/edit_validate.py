"""edit-validate: a document needs a text of at most 100,000 characters and
edits as a list of {"find", "replace"}; anything else fails the route here."""
import doc


def handler(event, context):
    d = doc.mark(doc.document(event), "edit-validate", context)
    text = d.get("text")
    if not isinstance(text, str) or not text.strip():
        raise ValueError("the document has no text")
    if len(text) > 100_000:
        raise ValueError("the document is over 100,000 characters")
    edits = d.get("edits", [])
    if not isinstance(edits, list) or not all(
        isinstance(e, dict) and isinstance(e.get("find"), str) and isinstance(e.get("replace"), str)
        for e in edits
    ):
        raise ValueError('edits must be a list of {"find": ..., "replace": ...}')
    d["valid"] = True
    return d


if __name__ == "__main__":
    doc.serve(handler)
