# flexsp_generate_messages(OUT_VAR SRC_PREFIX OUTPUT_DIR schema.capnp...)
#
# Runs capnpc-flexsp on each schema (relative to SRC_PREFIX): `<name>.msg.hpp` in OUTPUT_DIR
# holds the schema's messages as C++ types with their wire codecs, next to capnpc-c++'s
# `<name>.capnp.h` (generate that one into the same directory). OUT_VAR receives the headers.
function(flexsp_generate_messages out_var src_prefix output_dir)
  set(headers)
  foreach(schema IN LISTS ARGN)
    get_filename_component(base ${schema} NAME_WE)
    set(header ${output_dir}/${base}.msg.hpp)
    add_custom_command(
      OUTPUT ${header}
      COMMAND ${CMAKE_COMMAND} -E make_directory ${output_dir}
      COMMAND ${CAPNP_EXECUTABLE} compile -I ${CAPNP_INCLUDE_DIRECTORY} -I ${PROJECT_SOURCE_DIR}/core/schema
              --src-prefix=${src_prefix} -o$<TARGET_FILE:capnpc_flexsp>:${output_dir} ${src_prefix}/${schema}
      DEPENDS capnpc_flexsp ${src_prefix}/${schema}
      COMMENT "Generating C++ messages from ${schema}"
      VERBATIM)
    list(APPEND headers ${header})
  endforeach()
  set(${out_var} ${headers} PARENT_SCOPE)
endfunction()
