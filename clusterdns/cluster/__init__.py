"""The compiled cluster zone: Services become wire RRsets per owner name; lookups answer from them."""
