"""classify (gatekeeper): the entry step of events of type "document".

Pushes the rough route `edit log process`; a read-only document skips
`edit`. Its output is a routing envelope (docs/routing.md)."""
import doc


def handler(event, context):
    d = doc.mark(doc.document(event), "classify", context)
    d["class"] = "document"
    steps = ["log", "process"] if d.get("readonly") else ["edit", "log", "process"]
    return {"push": steps, "event": d}


if __name__ == "__main__":
    doc.serve(handler)
