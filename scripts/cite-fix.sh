#!/bin/sh
# One-off rewrite of citations of documents outside the repository (kept for re-runs after merges).
files=$(grep -rlE 'CONTRACT|c-libraries|STYLE rule|\.\./shared/DESIGN' src docs README.md tests scripts Makefile bench fuzz.mk 2>/dev/null | grep -v node_modules | grep -v scripts/cite-fix.sh | grep -v docs/STYLE.md)
for f in $files; do
  sed -i -E \
    -e 's/CONTRACT §1 option/README "Configuration" option/g' \
    -e 's/CONTRACT §1: logs/README "Configuration": logs/g' \
    -e 's/CONTRACT §4\.1/the README endpoint table/g' \
    -e 's/CONTRACT §4\.5, §1 flags/README "5-minute walkthrough" and "Configuration"/g' \
    -e 's/CONTRACT §4\.1–4\.4/README "Endpoints", docs\/openapi.json/g' \
    -e 's/CONTRACT §2–7/README "Endpoints", docs\/openapi.json/g' \
    -e 's/CONTRACT §5–7/README "Publishing and delivery"/g' \
    -e 's/CONTRACT §6 field order/README "Publishing and delivery" field order/g' \
    -e 's/CONTRACT §6 isolation/README "Publishing and delivery": isolation/g' \
    -e 's/CONTRACT §6/README "Publishing and delivery"/g' \
    -e 's/CONTRACT §2 gives/docs\/openapi.json gives/g' \
    -e 's/status codes of CONTRACT §2/status codes below (and docs\/openapi.json)/g' \
    -e 's/CONTRACT §1, §5, §6/README "Publishing and delivery"/g' \
    -e 's/CONTRACT §1, §3/README "Configuration" and "Endpoints"/g' \
    -e 's/CONTRACT §1, §2/README "Endpoints" and "Configuration"/g' \
    -e 's/CONTRACT §2, §3/README "Endpoints"/g' \
    -e 's/CONTRACT §1/README "Configuration"/g' \
    -e 's/CONTRACT §2/README "Endpoints"/g' \
    -e 's/CONTRACT 4\.4/README "Endpoints": DELETE/g' \
    -e "s/CONTRACT\.md's examples/the README's examples/g" \
    -e 's/STYLE rule ([0-9]+c?)/docs\/STYLE.md rule \1/g' \
    -e 's/The living version of `\.\.\/shared\/DESIGN\.md`\. //' \
    "$f"
done
