"""process: the final step; counts words and characters of the text."""
import doc


def handler(event, context):
    d = doc.mark(doc.document(event), "process", context)
    text = d.get("text", "")
    d["stats"] = {"words": len(text.split()), "characters": len(text)}
    return d


if __name__ == "__main__":
    doc.serve(handler)
