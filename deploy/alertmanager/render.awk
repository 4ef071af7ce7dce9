# Replaces each ${NAME} of an Alertmanager template with ENVIRON["NAME"],
# single quotes doubled (the template quotes every value '...').
# Used by entrypoint.sh in the container and by scripts/validate-deploy.sh.
{
    line = $0
    out = ""
    while (match(line, /\$\{[A-Z_][A-Z0-9_]*\}/)) {
        name = substr(line, RSTART + 2, RLENGTH - 3)
        value = ENVIRON[name]
        gsub(/'/, "''", value)
        out = out substr(line, 1, RSTART - 1) value
        line = substr(line, RSTART + RLENGTH)
    }
    print out line
}
