"""edit-front-end (gatekeeper): refines the rough step `edit` into the
concrete steps `edit-validate edit-apply`."""
import doc


def handler(event, context):
    d = doc.mark(doc.document(event), "edit-front-end", context)
    return {"push": ["edit-validate", "edit-apply"], "event": d}


if __name__ == "__main__":
    doc.serve(handler)
